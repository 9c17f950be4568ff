//! The node's own disk check (design.md §6, "a node knows first"): every
//! [`SELF_CHECK_INTERVAL_MS`] it reads its engine's metrics, hands the interval's figures to
//! the pure [`presage_pfa::local::LocalDetector`], and while the verdict is not healthy (and
//! for `hold-ms` after) hands every leadership it holds to its most caught-up voter.
//!
//! Walk-through:
//!
//! 1. **read**: the engine's cumulative latencies and errors, minus the previous reading's,
//!    give the interval's mean synced-write, write and read latency and its failed calls;
//!    `stalled_ms` (calls in flight, none returning), overall and per class, is read as it
//!    is now.
//! 2. **judge**: the detector compares them with its floors and the node's own history.
//! 3. **shed**: `NodeHandle::shed_leaderships` starts a transfer of every shard this node
//!    leads. A leadership it gains while still shedding (an election, the balancer) is handed
//!    on at the next interval. When the loop itself is stuck (silent for [`STUCK_LOOP_MS`]
//!    while a write has waited as long: a stalled disk), a transfer would wait with it, so,
//!    whatever the verdict, the check fences the node's published leases and sends each
//!    such shard's `MsgTimeoutNow` itself (`NodeHandle::hand_off_stuck`; why that is safe
//!    is in `presage_replication::lease`), and a follower takes over in a round trip instead
//!    of an election timeout. Writes that wait in the mailbox meanwhile are withdrawn with a
//!    definite error (after `max-mailbox-wait-ms`, or at once once the loop is found
//!    stuck), so clients retry them elsewhere. Shed requests go one at a time, so a stuck
//!    loop's mailbox does not fill with them.
//!
//! While shedding, the node's heartbeats say so (`NodeStats::shedding_leaders`) and the shard
//! manager gives it no leadership. The shard manager hears of the same disk through the telemetry agent (the latency and
//! `engine_stalled_ms` signals) and warns and migrates on its own evidence; this check only
//! moves leaderships, never replicas, so a false alarm costs at most `hold-ms` of leadership
//! elsewhere.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use presage_engine::{EngineMetrics, EngineMetricsSnapshot};
use presage_pfa::local::{LocalConfig, LocalDetector, LocalReading, LocalVerdict};
use presage_replication::NodeHandle;

/// How often the check reads the engine, ms.
pub const SELF_CHECK_INTERVAL_MS: u64 = 100;

/// A loop silent this long while a write has waited as long is stuck in that disk call: the
/// leaderships are handed away without it (`NodeHandle::hand_off_stuck`), ms. A healthy
/// loop wakes at least once a tick (100 ms).
pub const STUCK_LOOP_MS: u64 = 200;

/// What the check concluded, for metrics and logs.
#[derive(Debug, Default)]
pub struct SelfCheckState {
    /// The node is handing its leaderships away (the server's flag: its heartbeats tell the
    /// shard manager, which then gives the node none).
    pub shedding: Arc<AtomicBool>,
    /// Leadership transfers the check started since the node started.
    pub transfers: AtomicU64,
}

/// Runs the check until the replication node stops; `tick_interval_ms` is the loop's tick
/// (a loop is stuck only when silent for [`STUCK_LOOP_MS`] and two ticks).
pub async fn run(
    engine: Arc<EngineMetrics>,
    handle: NodeHandle,
    cfg: LocalConfig,
    tick_interval_ms: u64,
    state: Arc<SelfCheckState>,
) {
    if !cfg.enabled {
        return;
    }
    let stuck_loop_ms = STUCK_LOOP_MS.max(tick_interval_ms.saturating_mul(2));
    let mut shed: Option<ShedRequest> = None;
    let node = handle.node_id();
    let mut detector = LocalDetector::new(cfg);
    let mut ticker = tokio::time::interval(Duration::from_millis(SELF_CHECK_INTERVAL_MS));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = tokio::time::Instant::now();
    let mut previous = engine.snapshot();
    let mut was_healthy = true;
    loop {
        ticker.tick().await;
        let now = engine.snapshot();
        let at_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let reading = reading(at_ms, &previous, &now);
        previous = now;
        let verdict = detector.observe(&reading);
        match &verdict {
            LocalVerdict::Healthy => was_healthy = true,
            LocalVerdict::Slow { reason } | LocalVerdict::Failing { reason } if was_healthy => {
                was_healthy = false;
                tracing::warn!(node, %reason, failing = detector.failing(), "own disk unhealthy: handing leaderships away");
            }
            _ => {}
        }
        let silent_ms = handle.loop_silent_ms();
        if loop_stuck(&reading, silent_ms, stuck_loop_ms) {
            let started = handle.hand_off_stuck();
            for (shard, to) in &started {
                tracing::warn!(node, shard, to, silent_ms, "loop stuck on the disk: leadership handed away without it");
            }
            state.transfers.fetch_add(started.len() as u64, Ordering::Relaxed);
        }
        let shedding = detector.shedding(at_ms);
        state.shedding.store(shedding, Ordering::Relaxed);
        // One shed request at a time: a stuck loop would let them pile up in its mailbox.
        if let Some(done) = shed.take_if(|s| s.is_finished()) {
            match done.await {
                Ok(Ok(started)) => {
                    for (shard, to) in &started {
                        tracing::info!(node, shard, to, "leadership handed away: own disk unhealthy");
                    }
                    state.transfers.fetch_add(started.len() as u64, Ordering::Relaxed);
                }
                Ok(Err(presage_replication::Error::Stopped)) => return,
                Ok(Err(e)) => tracing::debug!(node, error = %e, "could not hand leaderships away this interval"),
                Err(e) => tracing::debug!(node, error = %e, "the shed request's task failed"),
            }
        }
        if shedding && shed.is_none() {
            let handle = handle.clone();
            shed = Some(tokio::spawn(async move { handle.shed_leaderships().await }));
        }
    }
}

/// A shed request in flight: the transfers it started, `(shard, to)`.
type ShedRequest = tokio::task::JoinHandle<presage_replication::Result<Vec<(u64, u64)>>>;

/// Is the loop stuck in a disk call? Silent for `stuck_loop_ms` while a write has waited as
/// long: no healthy loop is silent that long (it wakes every tick), and a transfer would
/// wait with it.
fn loop_stuck(reading: &LocalReading, loop_silent_ms: u64, stuck_loop_ms: u64) -> bool {
    reading.write_waiting_ms.max(reading.sync_waiting_ms) >= stuck_loop_ms && loop_silent_ms >= stuck_loop_ms
}

/// The interval between two engine snapshots as the detector reads it.
fn reading(at_ms: u64, before: &EngineMetricsSnapshot, now: &EngineMetricsSnapshot) -> LocalReading {
    let mean_ms = |now: &presage_engine::LatencySnapshot, before| now.since(before).mean_seconds().map(|s| s * 1e3);
    let errors = |s: &EngineMetricsSnapshot| s.read_errors + s.write_errors + s.sync_errors;
    LocalReading {
        at_ms,
        stalled_ms: now.stalled_ms,
        sync_mean_ms: mean_ms(&now.sync, &before.sync),
        write_mean_ms: mean_ms(&now.write, &before.write),
        read_mean_ms: mean_ms(&now.read, &before.read),
        sync_waiting_ms: now.stalled_by_class_ms.sync,
        write_waiting_ms: now.stalled_by_class_ms.write,
        read_waiting_ms: now.stalled_by_class_ms.read,
        errors: errors(now).saturating_sub(errors(before)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_is_the_interval_between_two_snapshots() {
        let mut before = EngineMetricsSnapshot::default();
        before.sync.count = 10;
        before.sync.sum_seconds = 0.010;
        before.write_errors = 2;
        let mut now = before.clone();
        now.sync.count = 12;
        now.sync.sum_seconds = 0.510;
        now.write_errors = 3;
        now.stalled_ms = 40;
        now.stalled_by_class_ms.write = 40;
        let r = reading(1_000, &before, &now);
        assert_eq!(r.at_ms, 1_000);
        assert_eq!(r.stalled_ms, 40);
        assert_eq!((r.write_waiting_ms, r.sync_waiting_ms, r.read_waiting_ms), (40, 0, 0));
        assert!((r.sync_mean_ms.expect("two syncs") - 250.0).abs() < 1e-6);
        assert_eq!(r.read_mean_ms, None, "no read returned");
        assert_eq!(r.errors, 1);
    }

    /// Stuck takes both: a loop silent while a write waits as long. A slow fsync on the log
    /// writer while the loop runs, or a quiet loop with nothing waiting, is not stuck.
    #[test]
    fn a_loop_is_stuck_only_when_silent_while_a_write_waits() {
        let waiting =
            |write, sync| LocalReading { write_waiting_ms: write, sync_waiting_ms: sync, ..Default::default() };
        assert!(loop_stuck(&waiting(250, 0), 250, 200));
        assert!(loop_stuck(&waiting(0, 300), 200, 200));
        assert!(!loop_stuck(&waiting(250, 250), 20, 200), "the loop runs");
        assert!(!loop_stuck(&waiting(0, 0), 5_000, 200), "nothing waits");
        assert!(!loop_stuck(&waiting(150, 0), 150, 200), "not yet");
        assert!(!loop_stuck(&waiting(250, 0), 250, 400), "two ticks of 200 ms");
    }
}
