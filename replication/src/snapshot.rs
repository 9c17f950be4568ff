//! Snapshot transfer: the data behind a Raft snapshot travels as the engine's export chunks
//! (zstd-compressed, crc32-checked, 1 MiB), not inside the Raft message.
//!
//! Sender (the leader): when Raft wants to send `MsgSnapshot`, the store holds the message
//! back and starts an [`OutgoingSnapshot`] over the engine snapshot taken when Raft asked for
//! the snapshot. Chunks go out within a window of unacknowledged chunks and the node's byte
//! budget (`snapshot_rate_bytes_per_sec`, shared by all transfers). Each acknowledgement
//! carries the receiver's durable resume point; a gap, a restart of either side or a lost
//! chunk is repaired by resuming the export there. When the receiver reports the stream
//! complete and verified, the held `MsgSnapshot` goes out.
//!
//! Receiver: each chunk goes through an `Importer` that stages it durably (nothing touches
//! the shard's range yet) and answers with an acknowledgement. A `MsgSnapshot` reaches Raft
//! only if its stream is complete; when Raft then installs it, the staged range is switched
//! in atomically and the log restarts after the snapshot index.
//!
//! Snapshot data as the engine's export chunks. Sender: window of `snapshot_window_chunks`, a
//! node-wide token bucket (`snapshot_rate_bytes_per_sec`), resend after `snapshot_resend_ticks`,
//! resume from the receiver's durable resume point, abandon after `snapshot_timeout_ticks`.
//! Receiver: stage through `Importer`, acknowledge, let the `MsgSnapshot` into Raft only when the
//! stream verified, install = atomic range switch. `RateGovernor`: the migration bandwidth budget
//! under AIMD, pure. It halves the bucket's rate (down to `snapshot_rate_floor_bytes_per_sec`)
//! after a window with snapshot traffic whose foreground p99 exceeds `snapshot_backoff_p99_pct` of
//! the median p99 of windows without it, and adds 1/16 of the cap otherwise. The tools' node
//! runtime feeds it each window (`metrics::take_foreground_window`) and applies it with
//! `NodeHandle::set_snapshot_rate`.

use std::collections::VecDeque;

use bytes::Bytes;
use presage_engine::transfer::{abort_import, ImportOptions, Importer, ResumePoint};
use presage_engine::{Cf, Engine, ExportOptions, Exporter, KeyRange, TransferError};
use raft::eraftpb::Message;

use crate::config::RaftConfig;
use crate::error::{Error, Result};
use crate::wire::{RaftEnvelope, ShardDescriptor, SnapshotAck, SnapshotChunk};

/// Import id under which a node stages the incoming snapshot of a shard (one at a time).
pub fn import_id(shard_id: u64) -> u64 {
    shard_id
}

/// A snapshot being streamed to one receiver.
pub struct OutgoingSnapshot<E: Engine> {
    /// The shard.
    pub shard_id: u64,
    /// The receiving node.
    pub to: u64,
    /// Raft index of the snapshot (also the export's stream id).
    pub index: u64,
    /// The Raft message to deliver once the data is there.
    pub msg: Message,
    descriptor: ShardDescriptor,
    exporter: Option<Exporter<E::Snapshot>>,
    next_seq: u64,
    unacked: VecDeque<(u64, Bytes)>,
    exhausted: bool,
    idle_ticks: u64,
    /// Bytes sent so far (resends included).
    pub bytes_sent: u64,
}

/// What an acknowledgement means for the sender.
pub enum AckOutcome {
    /// More to send.
    Continue,
    /// The receiver has everything: deliver the Raft message.
    Complete,
    /// The transfer cannot go on.
    Failed(String),
}

impl<E: Engine> OutgoingSnapshot<E> {
    /// Starts streaming `data` (the engine as of `index`) of `descriptor`'s range to `to`.
    pub fn new(
        to: u64,
        msg: Message,
        descriptor: ShardDescriptor,
        data: E::Snapshot,
        config: &RaftConfig,
    ) -> Result<Self> {
        let index = msg.snapshot.as_ref().and_then(|s| s.metadata.as_ref()).map_or(0, |m| m.index);
        let opts = ExportOptions { max_chunk_bytes: config.snapshot_chunk_bytes, ..ExportOptions::new(index) };
        let exporter = Exporter::new(data, Cf::Data, descriptor.range()?, opts);
        Ok(OutgoingSnapshot {
            shard_id: descriptor.id,
            to,
            index,
            msg,
            descriptor,
            exporter: Some(exporter),
            next_seq: 0,
            unacked: VecDeque::new(),
            exhausted: false,
            idle_ticks: 0,
            bytes_sent: 0,
        })
    }

    fn envelope(&self, from: u64, frame: &Bytes) -> RaftEnvelope {
        RaftEnvelope {
            shard_id: self.shard_id,
            from_node: from,
            to_node: self.to,
            descriptor: Some(self.descriptor.clone()),
            snapshot_chunk: Some(SnapshotChunk { index: self.index, frame: frame.to_vec() }),
            ..RaftEnvelope::default()
        }
    }

    /// Sends new chunks while the window and `budget_bytes` allow; returns the bytes used.
    pub fn pump(
        &mut self,
        from: u64,
        config: &RaftConfig,
        budget_bytes: i64,
        out: &mut Vec<RaftEnvelope>,
    ) -> Result<i64> {
        let mut used = 0i64;
        while !self.exhausted && self.unacked.len() < config.snapshot_window_chunks && used < budget_bytes {
            let Some(exporter) = self.exporter.as_mut() else { break };
            match exporter.next() {
                Some(Ok(frame)) => {
                    used += frame.len() as i64;
                    self.bytes_sent += frame.len() as u64;
                    out.push(self.envelope(from, &frame));
                    self.unacked.push_back((self.next_seq, frame));
                    self.next_seq += 1;
                }
                Some(Err(e)) => return Err(e.into()),
                None => self.exhausted = true,
            }
        }
        Ok(used)
    }

    /// One tick without an acknowledgement: after `snapshot_resend_ticks`, the window goes
    /// out again; after `snapshot_timeout_ticks`, the transfer fails.
    pub fn on_tick(&mut self, from: u64, config: &RaftConfig, out: &mut Vec<RaftEnvelope>) -> bool {
        self.idle_ticks += 1;
        if self.idle_ticks > config.snapshot_timeout_ticks {
            return false;
        }
        if self.idle_ticks.is_multiple_of(config.snapshot_resend_ticks) {
            for (_, frame) in &self.unacked {
                self.bytes_sent += frame.len() as u64;
                out.push(self.envelope(from, frame));
            }
        }
        true
    }

    /// Applies the receiver's acknowledgement.
    pub fn on_ack(&mut self, ack: &SnapshotAck) -> AckOutcome {
        if ack.index != self.index {
            return AckOutcome::Continue; // an older transfer's echo
        }
        self.idle_ticks = 0;
        if ack.ended {
            return AckOutcome::Complete;
        }
        while self.unacked.front().is_some_and(|(seq, _)| *seq < ack.next_seq) {
            self.unacked.pop_front();
        }
        let oldest = self.unacked.front().map_or(self.next_seq, |(seq, _)| *seq);
        if ack.next_seq == oldest {
            return AckOutcome::Continue;
        }
        // The receiver is elsewhere in the stream (it restarted, or kept an earlier
        // attempt's chunks): restart the export at its resume point.
        let Some(exporter) = self.exporter.take() else { return AckOutcome::Failed("exporter missing".into()) };
        let (cf, range): (Cf, KeyRange) = {
            let (cf, r) = exporter.target();
            (cf, r.clone())
        };
        let opts = exporter.options();
        let at = ResumePoint {
            stream_id: Some(self.index),
            next_seq: ack.next_seq,
            after_key: ack.after_key.clone(),
            ended: false,
        };
        match Exporter::resume(exporter.into_reader(), cf, range, opts, &at) {
            Ok(ex) => {
                self.exporter = Some(ex);
                self.unacked.clear();
                self.next_seq = ack.next_seq;
                self.exhausted = false;
                AckOutcome::Continue
            }
            Err(e) => AckOutcome::Failed(format!("cannot resume at {at:?}: {e}")),
        }
    }
}

/// Receiver: stages one chunk and returns the acknowledgement to send back.
pub fn receive_chunk<E: Engine>(
    engine: &E,
    node_id: u64,
    env: &RaftEnvelope,
    chunk: &SnapshotChunk,
) -> Result<RaftEnvelope> {
    let desc =
        env.descriptor.as_ref().ok_or(Error::Corrupt { what: "snapshot chunk", reason: "no descriptor".into() })?;
    let range = desc.range()?;
    let id = import_id(env.shard_id);
    let opts = ImportOptions::default();
    let mut importer = match Importer::open(engine, id, Cf::Data, range.clone(), opts) {
        Ok(imp) if imp.resume_point().stream_id.is_none_or(|s| s == chunk.index) => imp,
        Ok(_) | Err(TransferError::ImportConflict { .. }) => {
            // Staging of another snapshot (an older index, or the shard's range changed).
            abort_import(engine, id)?;
            Importer::open(engine, id, Cf::Data, range, opts).map_err(transfer_err)?
        }
        Err(e) => return Err(transfer_err(e)),
    };
    if let Err(e) = importer.push(&chunk.frame) {
        // Out of order, duplicated or damaged: the acknowledgement below tells the sender
        // where to resume.
        tracing::debug!(node = node_id, shard = env.shard_id, error = %e, "snapshot chunk refused");
    }
    fail::fail_point!("snapshot_chunk_staged");
    let at = importer.resume_point();
    Ok(RaftEnvelope {
        shard_id: env.shard_id,
        from_node: node_id,
        to_node: env.from_node,
        snapshot_ack: Some(SnapshotAck {
            index: chunk.index,
            next_seq: at.next_seq,
            after_key: at.after_key,
            ended: at.ended,
        }),
        ..RaftEnvelope::default()
    })
}

/// What a receiver holds staged for a shard (see [`staged`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Staged {
    /// Nothing: no import of the shard is under way.
    Nothing,
    /// The whole stream of snapshot `index`, verified chunk by chunk: ready to switch in.
    Complete,
    /// Another import (another snapshot, another range, or one not finished).
    Other,
}

/// Receiver: what is staged for `shard_id` with respect to snapshot `index` over `range`.
pub fn staged<E: Engine>(engine: &E, shard_id: u64, range: &KeyRange, index: u64) -> Result<Staged> {
    match Importer::open(engine, import_id(shard_id), Cf::Data, range.clone(), ImportOptions::default()) {
        Ok(imp) => {
            let at = imp.resume_point();
            Ok(if at.ended && at.stream_id == Some(index) {
                Staged::Complete
            } else if at.stream_id.is_none() && at.next_seq == 0 {
                Staged::Nothing
            } else {
                Staged::Other
            })
        }
        Err(TransferError::ImportConflict { .. }) => Ok(Staged::Other),
        Err(e) => Err(transfer_err(e)),
    }
}

/// Receiver: drops whatever is staged for `shard_id`.
pub fn abort_staged<E: Engine>(engine: &E, shard_id: u64) -> Result<()> {
    Ok(abort_import(engine, import_id(shard_id))?)
}

/// Receiver: is the data of snapshot `index` of `shard_id` fully staged and verified?
pub fn is_staged<E: Engine>(engine: &E, shard_id: u64, range: &KeyRange, index: u64) -> bool {
    match Importer::open(engine, import_id(shard_id), Cf::Data, range.clone(), ImportOptions::default()) {
        Ok(imp) => {
            let at = imp.resume_point();
            at.ended && at.stream_id == Some(index)
        }
        Err(_) => false,
    }
}

/// Receiver: switches the staged data of `shard_id` into its range (atomically).
pub fn install<E: Engine>(engine: &E, shard_id: u64, range: &KeyRange) -> Result<()> {
    let mut importer = Importer::open(engine, import_id(shard_id), Cf::Data, range.clone(), ImportOptions::default())
        .map_err(transfer_err)?;
    importer.finish().map_err(transfer_err)?;
    Ok(())
}

fn transfer_err(e: TransferError) -> Error {
    Error::Engine(e.to_string())
}

/// Windows without snapshot traffic remembered for the governor's baseline p99.
pub const GOVERNOR_QUIET_WINDOWS: usize = 30;
/// Fewest foreground requests in a window for its p99 to count.
pub const GOVERNOR_MIN_REQUESTS_PER_WINDOW: u64 = 20;
/// The budget grows by the cap divided by this after each window that does not back off.
pub const GOVERNOR_INCREASE_STEPS: u64 = 16;

/// What one governor window saw on a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GovernorWindow {
    /// Foreground requests served (reads and writes from clients).
    pub requests: u64,
    /// Their 99th-percentile latency, in microseconds.
    pub p99_us: u64,
    /// Snapshot data the node sent in the window, in bytes.
    pub snapshot_bytes: u64,
}

/// What the governor did with a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GovernorAction {
    /// The budget stayed (already at the cap).
    Hold,
    /// The budget grew by one step (additive increase).
    Increase,
    /// The budget halved (multiplicative decrease): snapshot traffic went with a foreground
    /// p99 above the quiet baseline.
    Decrease,
}

/// The node's migration bandwidth budget under AIMD: it halves (down to
/// `snapshot_rate_floor_bytes_per_sec`) after a window in which snapshot data went out and the
/// foreground p99 exceeded `snapshot_backoff_p99_pct` percent of the baseline, and grows by
/// `1/GOVERNOR_INCREASE_STEPS` of the cap after any other window. The baseline is the median
/// p99 of the last `GOVERNOR_QUIET_WINDOWS` windows without snapshot traffic, so a foreground
/// that is slow for reasons of its own (a degrading disk) does not starve the copies that move
/// data off it. Without a baseline yet, or with too few requests to measure, nothing backs off.
/// Pure: the node runtime feeds it windows and applies its rate with
/// [`crate::NodeHandle::set_snapshot_rate`].
#[derive(Debug, Clone)]
pub struct RateGovernor {
    cap_bytes_per_sec: u64,
    floor_bytes_per_sec: u64,
    backoff_p99_pct: u64,
    rate_bytes_per_sec: u64,
    quiet_p99_us: VecDeque<u64>,
}

impl RateGovernor {
    /// A governor at the cap, with no baseline.
    pub fn new(config: &RaftConfig) -> Self {
        RateGovernor {
            cap_bytes_per_sec: config.snapshot_rate_bytes_per_sec,
            floor_bytes_per_sec: config.snapshot_rate_floor(),
            backoff_p99_pct: config.snapshot_backoff_p99_pct,
            rate_bytes_per_sec: config.snapshot_rate_bytes_per_sec,
            quiet_p99_us: VecDeque::with_capacity(GOVERNOR_QUIET_WINDOWS),
        }
    }

    /// The budget now, in bytes per second.
    pub fn rate_bytes_per_sec(&self) -> u64 {
        self.rate_bytes_per_sec
    }

    /// The median foreground p99 of the remembered quiet windows, in microseconds.
    pub fn baseline_p99_us(&self) -> Option<u64> {
        let mut sorted: Vec<u64> = self.quiet_p99_us.iter().copied().collect();
        sorted.sort_unstable();
        sorted.get(sorted.len() / 2).copied()
    }

    /// Takes one window into account; the budget after it is [`Self::rate_bytes_per_sec`].
    pub fn observe(&mut self, window: GovernorWindow) -> GovernorAction {
        let measured = window.requests >= GOVERNOR_MIN_REQUESTS_PER_WINDOW;
        let action = if window.snapshot_bytes == 0 {
            if measured {
                if self.quiet_p99_us.len() == GOVERNOR_QUIET_WINDOWS {
                    self.quiet_p99_us.pop_front();
                }
                self.quiet_p99_us.push_back(window.p99_us);
            }
            self.increase()
        } else {
            match self.baseline_p99_us() {
                Some(base)
                    if measured
                        && u128::from(window.p99_us) * 100
                            > u128::from(base.max(1)) * u128::from(self.backoff_p99_pct) =>
                {
                    self.rate_bytes_per_sec = (self.rate_bytes_per_sec / 2).max(self.floor_bytes_per_sec);
                    GovernorAction::Decrease
                }
                _ => self.increase(),
            }
        };
        debug_assert!((self.floor_bytes_per_sec..=self.cap_bytes_per_sec).contains(&self.rate_bytes_per_sec));
        action
    }

    fn increase(&mut self) -> GovernorAction {
        if self.rate_bytes_per_sec >= self.cap_bytes_per_sec {
            return GovernorAction::Hold;
        }
        let step = (self.cap_bytes_per_sec / GOVERNOR_INCREASE_STEPS).max(1);
        self.rate_bytes_per_sec = self.rate_bytes_per_sec.saturating_add(step).min(self.cap_bytes_per_sec);
        GovernorAction::Increase
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn governor() -> RateGovernor {
        let config = RaftConfig {
            snapshot_rate_bytes_per_sec: 64 * MIB,
            snapshot_rate_floor_bytes_per_sec: 4 * MIB,
            snapshot_backoff_p99_pct: 150,
            ..RaftConfig::default()
        };
        RateGovernor::new(&config)
    }

    fn window(p99_us: u64, snapshot_bytes: u64) -> GovernorWindow {
        GovernorWindow { requests: 1000, p99_us, snapshot_bytes }
    }

    #[test]
    fn halves_when_copies_raise_the_foreground_p99_and_never_goes_below_the_floor() {
        let mut g = governor();
        for _ in 0..10 {
            assert_eq!(g.observe(window(1_000, 0)), GovernorAction::Hold, "quiet windows keep the cap");
        }
        assert_eq!(g.baseline_p99_us(), Some(1_000));
        assert_eq!(g.observe(window(1_400, MIB)), GovernorAction::Hold, "below 150%: no back-off");
        assert_eq!(g.observe(window(1_600, MIB)), GovernorAction::Decrease);
        assert_eq!(g.rate_bytes_per_sec(), 32 * MIB);
        for _ in 0..10 {
            g.observe(window(5_000, MIB));
        }
        assert_eq!(g.rate_bytes_per_sec(), 4 * MIB, "the floor holds");
        assert_eq!(g.baseline_p99_us(), Some(1_000), "windows with copies do not move the baseline");
    }

    #[test]
    fn grows_back_additively_once_the_foreground_recovers() {
        let mut g = governor();
        for _ in 0..5 {
            g.observe(window(1_000, 0));
        }
        for _ in 0..4 {
            g.observe(window(10_000, MIB));
        }
        assert_eq!(g.rate_bytes_per_sec(), 4 * MIB);
        assert_eq!(g.observe(window(1_000, MIB)), GovernorAction::Increase);
        assert_eq!(g.rate_bytes_per_sec(), 8 * MIB, "one step is 1/16 of the cap");
        for _ in 0..30 {
            g.observe(window(1_000, MIB));
        }
        assert_eq!(g.rate_bytes_per_sec(), 64 * MIB, "the cap holds");
    }

    #[test]
    fn no_back_off_without_a_baseline_or_with_too_few_requests() {
        let mut g = governor();
        assert_eq!(g.observe(window(50_000, MIB)), GovernorAction::Hold, "no quiet window yet");
        g.observe(window(1_000, 0));
        let sparse =
            GovernorWindow { requests: GOVERNOR_MIN_REQUESTS_PER_WINDOW - 1, p99_us: 50_000, snapshot_bytes: MIB };
        assert_eq!(g.observe(sparse), GovernorAction::Hold, "too few requests to judge");
        assert_eq!(g.rate_bytes_per_sec(), 64 * MIB);
        let quiet_sparse = GovernorWindow { requests: 1, p99_us: 1, snapshot_bytes: 0 };
        g.observe(quiet_sparse);
        assert_eq!(g.baseline_p99_us(), Some(1_000), "a sparse quiet window is not remembered");
    }

    #[test]
    fn a_foreground_slow_on_its_own_raises_the_baseline_and_does_not_starve_copies() {
        let mut g = governor();
        for p99 in (1..=GOVERNOR_QUIET_WINDOWS as u64 * 2).map(|i| 1_000 * i) {
            g.observe(window(p99, 0));
        }
        let base = g.baseline_p99_us().expect("baseline");
        assert!(base > 30_000, "the baseline follows the slow disk: {base}");
        assert_ne!(g.observe(window(base, MIB)), GovernorAction::Decrease);
    }
}
