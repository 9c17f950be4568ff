//! `presage-bench scenario overload` (seed 001: critical traffic first): critical requests at
//! a steady paced rate, alone and then under a flood of bulk writes, on a cluster with
//! admission by priority on and on one with it off, side by side.
//!
//! - **Critical**: `critical_workers` workers, each a put or a get (half each) every
//!   `critical_interval_ms` on a fixed schedule (open loop: latency runs from the scheduled
//!   start), through a client whose priority is `critical`.
//! - **Bulk**: `bulk_workers` closed-loop writers of `bulk_value_bytes` values through a client
//!   whose priority is `bulk` (the client library retries a shed request after a doubling
//!   backoff: that is the bulk traffic backing off).
//! - **Phases**: `warmup_secs` of critical alone, not counted (the new cluster settles: its
//!   leaderships balance), `phase_secs` of critical alone (the unloaded p99), then `phase_secs`
//!   with the bulk flood (the loaded p99). Reported per mode: both p99s and their ratio, critical
//!   requests failed, bulk writes done per second and bulk requests the nodes shed
//!   (`presage_admission_shed_total`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use presage_client::{Client, Priority};
use presage_playground::Playground;
use serde::Serialize;

use super::ScenarioOptions;

/// The overload scenario's settings.
#[derive(Debug, Clone)]
pub struct OverloadOptions {
    /// Cluster shape and binary (its story settings are unused).
    pub cluster: ScenarioOptions,
    /// Seconds of critical traffic before the first phase, not counted.
    pub warmup_secs: u64,
    /// Seconds of each phase.
    pub phase_secs: u64,
    /// Paced critical workers.
    pub critical_workers: usize,
    /// Each critical worker's interval.
    pub critical_interval_ms: u64,
    /// Closed-loop bulk writers.
    pub bulk_workers: usize,
    /// Bytes of each bulk value.
    pub bulk_value_bytes: usize,
}

impl Default for OverloadOptions {
    fn default() -> Self {
        OverloadOptions {
            cluster: ScenarioOptions::default(),
            warmup_secs: 15,
            phase_secs: 20,
            critical_workers: 4,
            critical_interval_ms: 20,
            bulk_workers: 64,
            bulk_value_bytes: 4 << 10,
        }
    }
}

/// One mode's figures.
#[derive(Debug, Clone, Serialize)]
pub struct OverloadReport {
    /// Admission by priority was on.
    pub admission: bool,
    /// Critical p50 and p99 alone, ms.
    pub critical_p50_ms_unloaded: f64,
    /// Critical p99 alone.
    pub critical_p99_ms_unloaded: f64,
    /// Critical p50 under the bulk flood.
    pub critical_p50_ms_loaded: f64,
    /// Critical p99 under the bulk flood.
    pub critical_p99_ms_loaded: f64,
    /// Loaded over unloaded p99.
    pub p99_ratio: f64,
    /// Critical requests sent in the two phases.
    pub critical_requests: u64,
    /// Critical requests that failed (after the client's retries).
    pub critical_failed: u64,
    /// Bulk writes done per second under the flood.
    pub bulk_writes_per_sec: f64,
    /// Bulk writes that failed (timed out retrying).
    pub bulk_failed: u64,
    /// Bulk requests the nodes shed (every attempt counts).
    pub bulk_shed: u64,
}

/// Runs the scenario with admission on, then off.
pub async fn run(opts: &OverloadOptions, narrate: &(dyn Fn(&str) + Sync)) -> Result<Vec<OverloadReport>> {
    let mut out = Vec::new();
    for admission in [true, false] {
        narrate(&format!("admission by priority {}", if admission { "on" } else { "off" }));
        let overrides = vec![format!("server.admission.enabled={admission}")];
        let (_tmp, mut pg) = super::start_playground(&opts.cluster, overrides, "presage-overload-").await?;
        let result = one(&pg, opts, admission, narrate).await;
        let _ = tokio::task::spawn_blocking(move || pg.stop(Duration::from_secs(20))).await;
        out.push(result?);
    }
    Ok(out)
}

async fn client(pg: &Playground, priority: Priority) -> Result<Arc<Client>> {
    let cfg = presage_client::ClientConfig { priority, ..pg.client_config() };
    Ok(Arc::new(Client::connect(&pg.cluster.native_addrs(), cfg).await.context("connecting")?))
}

/// Critical latencies, recorded by the paced workers while `phase` says where.
struct Critical {
    /// Alone, under the flood, and the warm-up's (not reported).
    hist: [Mutex<Histogram<u64>>; 3],
    phase: AtomicU64,
    sent: AtomicU64,
    failed: AtomicU64,
}

async fn one(
    pg: &Playground,
    opts: &OverloadOptions,
    admission: bool,
    narrate: &(dyn Fn(&str) + Sync),
) -> Result<OverloadReport> {
    let critical_client = client(pg, Priority::Critical).await?;
    let bulk_client = client(pg, Priority::Bulk).await?;
    // Warm the routes and the shard.
    for i in 0..100u32 {
        critical_client.put(format!("c{i:04}").as_bytes(), b"warm").await.context("warm-up")?;
    }
    let hist = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map(Mutex::new);
    let critical = Arc::new(Critical {
        hist: [hist()?, hist()?, hist()?],
        phase: AtomicU64::new(2),
        sent: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..opts.critical_workers {
        let (client, critical, stop) = (Arc::clone(&critical_client), Arc::clone(&critical), Arc::clone(&stop));
        let interval = Duration::from_millis(opts.critical_interval_ms);
        tasks.push(tokio::spawn(async move {
            let mut next = tokio::time::Instant::now() + interval * w as u32 / 4;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep_until(next).await;
                let key = format!("c{:04}", (i * 7 + w as u64) % 100);
                let r = if i.is_multiple_of(2) {
                    client.put(key.as_bytes(), b"critical").await
                } else {
                    client.get(key.as_bytes()).await.map(|_| ())
                };
                let latency_us = next.elapsed().as_micros() as u64;
                let phase = (critical.phase.load(Ordering::Relaxed) as usize).min(2);
                if phase < 2 {
                    critical.sent.fetch_add(1, Ordering::Relaxed);
                    if r.is_err() {
                        critical.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if let Ok(mut h) = critical.hist[phase].lock() {
                    let _ = h.record(latency_us.max(1));
                }
                i += 1;
                next += interval;
            }
        }));
    }
    narrate(&format!("{} s of warm-up", opts.warmup_secs));
    tokio::time::sleep(Duration::from_secs(opts.warmup_secs)).await;
    critical.phase.store(0, Ordering::Relaxed);
    narrate(&format!("{} s of critical traffic alone", opts.phase_secs));
    tokio::time::sleep(Duration::from_secs(opts.phase_secs)).await;
    let shed_before = shed_bulk(pg).await;
    critical.phase.store(1, Ordering::Relaxed);
    narrate(&format!("{} s with {} bulk writers", opts.phase_secs, opts.bulk_workers));
    let (bulk_done, bulk_failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let bulk_stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut bulk = Vec::new();
    for w in 0..opts.bulk_workers {
        let (client, done, failed, stop) =
            (Arc::clone(&bulk_client), Arc::clone(&bulk_done), Arc::clone(&bulk_failed), Arc::clone(&bulk_stop));
        let value = vec![b'b'; opts.bulk_value_bytes];
        bulk.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("b{w:03}-{:06}", i % 100_000);
                match client.put(key.as_bytes(), &value).await {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(opts.phase_secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let bulk_writes = bulk_done.load(Ordering::Relaxed);
    let bulk_shed = shed_bulk(pg).await.saturating_sub(shed_before);
    bulk_stop.store(true, Ordering::Relaxed);
    for t in bulk {
        let _ = t.await;
    }
    let q = |phase: usize, q: f64| {
        critical.hist[phase].lock().map(|h| h.value_at_quantile(q) as f64 / 1_000.0).unwrap_or(0.0)
    };
    let (p99_unloaded, p99_loaded) = (q(0, 0.99), q(1, 0.99));
    Ok(OverloadReport {
        admission,
        critical_p50_ms_unloaded: q(0, 0.5),
        critical_p99_ms_unloaded: p99_unloaded,
        critical_p50_ms_loaded: q(1, 0.5),
        critical_p99_ms_loaded: p99_loaded,
        p99_ratio: if p99_unloaded > 0.0 { p99_loaded / p99_unloaded } else { 0.0 },
        critical_requests: critical.sent.load(Ordering::Relaxed),
        critical_failed: critical.failed.load(Ordering::Relaxed),
        bulk_writes_per_sec: bulk_writes as f64 / elapsed,
        bulk_failed: bulk_failed.load(Ordering::Relaxed),
        bulk_shed,
    })
}

/// Bulk requests every node shed so far (`presage_admission_shed_total{priority="bulk"}`).
async fn shed_bulk(pg: &Playground) -> u64 {
    let admins = pg.admins(None);
    tokio::task::spawn_blocking(move || {
        let mut total = 0u64;
        for (_, a) in admins {
            let Ok(text) = a.client().get_raw("/metrics") else { continue };
            total += super::metric_value(&text, "presage_admission_shed_total{priority=\"bulk\"}") as u64;
        }
        total
    })
    .await
    .unwrap_or(0)
}

/// The reports side by side.
pub fn table(reports: &[OverloadReport]) -> String {
    let mut out = String::from(
        "admission  crit p50/p99 alone ms  crit p50/p99 flood ms  p99 ratio  crit failed/sent  bulk writes/s  bulk failed  bulk shed\n",
    );
    for r in reports {
        out += &format!(
            "{:<9}  {:>9.2} / {:<9.2}  {:>9.2} / {:<9.2}  {:>9.2}  {:>6} / {:<8}  {:>13.0}  {:>11}  {:>9}\n",
            if r.admission { "on" } else { "off" },
            r.critical_p50_ms_unloaded,
            r.critical_p99_ms_unloaded,
            r.critical_p50_ms_loaded,
            r.critical_p99_ms_loaded,
            r.p99_ratio,
            r.critical_failed,
            r.critical_requests,
            r.bulk_writes_per_sec,
            r.bulk_failed,
            r.bulk_shed,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_metric_is_read_by_its_whole_series_name() {
        let text = "# HELP x\npresage_admission_shed_total{priority=\"bulk\"} 12\n\
                    presage_admission_shed_total{priority=\"bulk_other\"} 5\npresage_snapshot_sent_bytes_total 7\n";
        assert_eq!(super::super::metric_value(text, "presage_admission_shed_total{priority=\"bulk\"}"), 12.0);
        assert_eq!(super::super::metric_value(text, "presage_snapshot_sent_bytes_total"), 7.0);
        assert_eq!(super::super::metric_value(text, "presage_snapshot_sent"), 0.0, "a prefix is not the series");
    }
}
