//! `RaftConfig`: every setting of the replication layer, validated in one place.

use std::time::Duration;

use crate::error::{Error, Result};

/// Settings of a node's multi-Raft store. Units are in the names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct RaftConfig {
    /// Length of one Raft tick, in milliseconds.
    pub tick_interval_ms: u64,
    /// Ticks without a leader before a follower campaigns (randomised in
    /// `[election_ticks, 2 * election_ticks)`).
    pub election_ticks: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_ticks: usize,
    /// Most in-flight append messages to one follower.
    pub max_inflight_msgs: usize,
    /// Most entry bytes in one append message.
    pub max_msg_bytes: u64,
    /// Most bytes of proposed but uncommitted entries a leader accepts.
    pub max_uncommitted_bytes: u64,
    /// Most committed entry bytes applied in one ready round.
    pub max_apply_bytes_per_ready: u64,
    /// Log entries kept past the applied index before the log is compacted.
    pub log_gc_threshold_entries: u64,
    /// Most client requests queued in a node's mailbox.
    pub max_mailbox_msgs: usize,
    /// Most messages handled between two ready rounds.
    pub max_msgs_per_round: usize,
    /// Most bytes (Raft messages and proposed writes) queued in a node's mailbox; past it a
    /// request is refused with `Busy` and a Raft message dropped (Raft resends).
    pub max_mailbox_bytes: usize,
    /// A write the node's loop has not taken from the mailbox after this long is withdrawn
    /// and refused `Unresponsive` (a definite error: nothing was proposed), and while the
    /// loop has made no progress for this long every read and write is refused so at once:
    /// a client retries elsewhere instead of waiting on a stalled node, ms.
    pub max_mailbox_wait_ms: u64,
    /// After an engine write failed, the node hands its leaderships away for at most this
    /// long before it stops (it stops sooner once it leads nothing), ms.
    pub fail_stop_timeout_ms: u64,
    /// A node whose clock is further than this from the median of its peers' is out of
    /// sync: its leaders serve no leased read until it is back (`crate::clock`), ms.
    pub max_clock_offset_ms: u64,
    /// A peer's clock reading counts for this long after it arrived, ms.
    pub clock_reading_max_age_ms: u64,
    /// Most bytes of Raft messages and proposed writes taken into one ready round (the rest
    /// waits for the next): with `max-apply-bytes-per-ready`, it bounds each round's engine
    /// batches, so a burst of large values cannot stall or exhaust a node.
    pub max_round_bytes: usize,
    /// Serve reads under the leader's lease instead of a ReadIndex round trip. A lease lasts
    /// 4/5 of the election timeout minus one tick, measured on the leader's monotonic clock
    /// from the start of the ReadIndex round that confirmed it: safe while no node's clock
    /// runs more than 20% faster than another's (see the crate doc). On by default.
    pub lease_reads: bool,
    /// Threads that do the engine work of reads the store loop served, so that a slow read
    /// never holds up the loop (`read_pool.rs`); 0: the loop reads itself.
    pub read_threads: usize,
    /// Most served reads waiting for a read thread; past it a read is refused `Busy` (a
    /// client retries it elsewhere) rather than run on the loop.
    pub max_queued_reads: usize,
    /// Ticks of inactivity after which a caught-up group stops ticking (0: never).
    pub quiesce_after_ticks: u64,
    /// Most snapshot data sent per second by this node, in bytes (all transfers together):
    /// the cap of the migration bandwidth budget.
    pub snapshot_rate_bytes_per_sec: u64,
    /// The least the budget is lowered to when foreground latency rises, in bytes per second
    /// (copies always progress). A floor above the cap is the cap.
    pub snapshot_rate_floor_bytes_per_sec: u64,
    /// The budget halves after a window in which snapshot data went out and the foreground
    /// p99 exceeded this percentage of the p99 of windows without snapshot traffic.
    pub snapshot_backoff_p99_pct: u64,
    /// Length of one window of the budget's governor, in milliseconds.
    pub snapshot_governor_window_ms: u64,
    /// Target uncompressed size of one snapshot chunk, in bytes.
    pub snapshot_chunk_bytes: usize,
    /// Snapshot chunks in flight to one receiver before its acknowledgement.
    pub snapshot_window_chunks: usize,
    /// Ticks without an acknowledgement before unacknowledged chunks are sent again.
    pub snapshot_resend_ticks: u64,
    /// Ticks without progress before a snapshot transfer is abandoned (Raft retries later).
    pub snapshot_timeout_ticks: u64,
    /// Most log entries a leadership-transfer target may lag behind the leader.
    pub max_transfer_lag_entries: u64,
    /// Replace raft-rs's random election timeouts by a fixed one per node
    /// (`election_ticks + node_id % election_ticks`), for replayable tests. Off in production.
    pub deterministic_elections: bool,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            tick_interval_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 2,
            max_inflight_msgs: 256,
            max_msg_bytes: 1024 * 1024,
            max_uncommitted_bytes: 64 * 1024 * 1024,
            max_apply_bytes_per_ready: 16 * 1024 * 1024,
            log_gc_threshold_entries: 1024,
            max_mailbox_msgs: 4096,
            max_msgs_per_round: 1024,
            max_mailbox_bytes: 256 * 1024 * 1024,
            max_mailbox_wait_ms: 1_000,
            fail_stop_timeout_ms: 3_000,
            max_clock_offset_ms: 500,
            clock_reading_max_age_ms: 10_000,
            max_round_bytes: 32 * 1024 * 1024,
            lease_reads: true,
            read_threads: 2,
            max_queued_reads: 1024,
            quiesce_after_ticks: 20,
            deterministic_elections: false,
            max_transfer_lag_entries: 128,
            snapshot_rate_bytes_per_sec: 100 * 1024 * 1024,
            snapshot_rate_floor_bytes_per_sec: 4 * 1024 * 1024,
            snapshot_backoff_p99_pct: 150,
            snapshot_governor_window_ms: 1000,
            snapshot_chunk_bytes: 1024 * 1024,
            snapshot_window_chunks: 4,
            snapshot_resend_ticks: 20,
            snapshot_timeout_ticks: 600,
        }
    }
}

impl RaftConfig {
    /// The tick length.
    pub fn tick_interval(&self) -> Duration {
        Duration::from_millis(self.tick_interval_ms)
    }

    /// Fails with a message naming the first bad setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.tick_interval_ms == 0 {
            return bad("tick-interval-ms must be positive".into());
        }
        if self.max_clock_offset_ms == 0 || self.clock_reading_max_age_ms == 0 {
            return bad("max-clock-offset-ms and clock-reading-max-age-ms must be positive".into());
        }
        if self.read_threads > crate::read_pool::MAX_READ_THREADS || self.max_queued_reads == 0 {
            return bad(format!(
                "read-threads must be at most {} and max-queued-reads positive",
                crate::read_pool::MAX_READ_THREADS
            ));
        }
        if self.heartbeat_ticks == 0 {
            return bad("heartbeat-ticks must be positive".into());
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return bad(format!(
                "election-ticks ({}) must exceed heartbeat-ticks ({})",
                self.election_ticks, self.heartbeat_ticks
            ));
        }
        if self.max_inflight_msgs == 0 || self.max_mailbox_msgs == 0 || self.max_msgs_per_round == 0 {
            return bad("max-inflight-msgs, max-mailbox-msgs and max-msgs-per-round must be positive".into());
        }
        if self.max_mailbox_wait_ms < 2 * self.tick_interval_ms {
            return bad(format!(
                "max-mailbox-wait-ms ({}) must be at least two ticks ({} ms): an idle loop makes progress once a tick",
                self.max_mailbox_wait_ms,
                2 * self.tick_interval_ms
            ));
        }
        if self.max_round_bytes == 0 || self.max_mailbox_bytes < self.max_round_bytes {
            return bad(format!(
                "max-round-bytes ({}) must be positive and at most max-mailbox-bytes ({})",
                self.max_round_bytes, self.max_mailbox_bytes
            ));
        }
        if self.max_msg_bytes == 0 || self.max_uncommitted_bytes == 0 || self.max_apply_bytes_per_ready == 0 {
            return bad("max-msg-bytes, max-uncommitted-bytes and max-apply-bytes-per-ready must be positive".into());
        }
        if self.snapshot_rate_bytes_per_sec == 0 || self.snapshot_chunk_bytes < 1024 || self.snapshot_window_chunks == 0
        {
            return bad("snapshot-rate-bytes-per-sec and snapshot-window-chunks must be positive, snapshot-chunk-bytes at least 1KiB".into());
        }
        if self.snapshot_rate_floor_bytes_per_sec == 0 || self.snapshot_governor_window_ms == 0 {
            return bad("snapshot-rate-floor-bytes-per-sec and snapshot-governor-window-ms must be positive".into());
        }
        if self.snapshot_backoff_p99_pct < 100 {
            return bad(format!("snapshot-backoff-p99-pct ({}) must be at least 100", self.snapshot_backoff_p99_pct));
        }
        if self.snapshot_resend_ticks == 0 || self.snapshot_timeout_ticks <= self.snapshot_resend_ticks {
            return bad("snapshot-timeout-ticks must exceed snapshot-resend-ticks, which must be positive".into());
        }
        if self.lease_ticks() == Some(0) {
            return bad("lease-reads needs election-ticks of at least 3".into());
        }
        if self.log_gc_threshold_entries == 0 {
            return bad("log-gc-threshold-entries must be positive".into());
        }
        Ok(())
    }

    /// Length of a read lease in ticks, when lease reads are on.
    pub fn lease_ticks(&self) -> Option<u64> {
        self.lease_reads.then(|| (self.election_ticks as u64 * 4 / 5).saturating_sub(1))
    }

    /// Length of a read lease, when lease reads are on.
    pub fn lease(&self) -> Option<Duration> {
        self.lease_ticks().map(|t| self.tick_interval() * u32::try_from(t).unwrap_or(u32::MAX))
    }

    /// The budget's effective floor: `snapshot_rate_floor_bytes_per_sec`, at most the cap.
    pub fn snapshot_rate_floor(&self) -> u64 {
        self.snapshot_rate_floor_bytes_per_sec.min(self.snapshot_rate_bytes_per_sec)
    }

    /// Snapshot bytes this node may send per tick at `rate_bytes_per_sec`.
    pub(crate) fn snapshot_bytes_per_tick(&self, rate_bytes_per_sec: u64) -> u64 {
        (u128::from(rate_bytes_per_sec) * u128::from(self.tick_interval_ms) / 1000).max(1) as u64
    }

    /// The fixed election-timeout offset of `node_id` when elections are deterministic.
    pub(crate) fn fixed_election_offset(&self, node_id: u64) -> Option<usize> {
        let ticks = u64::try_from(self.election_ticks).ok()?;
        self.deterministic_elections.then(|| usize::try_from(node_id % ticks).unwrap_or(0))
    }

    /// The raft-rs configuration of replica `id` applied up to `applied`. Pre-vote and
    /// check-quorum are always on.
    pub(crate) fn raft_config(&self, id: u64, applied: u64) -> raft::Config {
        raft::Config {
            id,
            election_tick: self.election_ticks,
            heartbeat_tick: self.heartbeat_ticks,
            applied,
            max_size_per_msg: self.max_msg_bytes,
            max_inflight_msgs: self.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            // Lease reads are ours (`Peer::read`): raft-rs's `LeaseBased` trusts check-quorum,
            // which can lag a new election by up to an election timeout.
            read_only_option: raft::ReadOnlyOption::Safe,
            max_uncommitted_size: self.max_uncommitted_bytes,
            max_committed_size_per_ready: self.max_apply_bytes_per_ready,
            // Off: with raft-rs 0.7's `batch_append` on, the sharded nemesis (seed 3) saw a
            // follower told to commit past its last log index.
            batch_append: false,
            ..raft::Config::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_are_named() {
        RaftConfig::default().validate().expect("defaults are valid");
        let err = RaftConfig { election_ticks: 2, ..RaftConfig::default() }.validate().expect_err("bad");
        assert!(err.to_string().contains("election-ticks"), "{err}");
        assert!(RaftConfig { tick_interval_ms: 0, ..RaftConfig::default() }.validate().is_err());
        let rc = RaftConfig::default().raft_config(3, 17);
        assert!(rc.pre_vote && rc.check_quorum);
        rc.validate().expect("raft-rs accepts it");
    }
}
