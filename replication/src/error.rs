//! Errors of the replication layer, as clients and operators see them.
//!
//! `NotLeader{leader}`, `EpochNotMatch{current}`, `ProposalDropped` (certainly not applied),
//! `OutcomeUnknown` (a proposal cut off by a leader change: may still apply), `SwapRefused`,
//! `ChecksumNotReady{applied}` (retry), `ChecksumMissed` (new round), ... Membership: conf changes
//! are `ConfChangeV2` (joint consensus, auto-leave). A node creates an empty replica when a
//! leader's message lists it; it fills by snapshot. A replica moves by add learner, verify
//! (`compute_checksum` on the leader, `replica_checksum` at the same index on the learner),
//! `swap_replicas` (the learner votes, the old voter becomes a learner, in one joint change;
//! leadership leaves the old voter first), remove the demoted learner. A removed replica is
//! destroyed (log, states, data) with a tombstone at its `conf_ver`; a replica removed in a
//! configuration it never saw learns it from a tombstone envelope sent by any newer member.
//! Leadership transfer is refused to non-voters, to a target receiving a snapshot, or one more than
//! `max_transfer_lag_entries` behind. Split and merge: `NodeHandle::split(shard, epoch, split_key,
//! new_shard_id)` and `NodeHandle::merge(source, target, confirm_timeout)`; data keys carry no
//! shard prefix, so both change metadata only. Merge needs adjacent shards with the same voters,
//! led by the same node: it freezes the source, waits until every source replica reports the freeze
//! committed (else rolls back), then commits on the target, so a lagging replica finishes the merge
//! on its own without a source leader. The policies (when, where, which id) belong to `shardmgr`.

use crate::wire::ShardDescriptor;

/// Result of a replication operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a request was not served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// This replica is not the shard's leader; retry at the hinted node.
    #[error("shard {shard_id}: not the leader (leader hint: {leader:?})")]
    NotLeader {
        /// The shard.
        shard_id: u64,
        /// The node believed to lead it, if known.
        leader: Option<u64>,
    },
    /// The request's shard epoch is stale or its keys left the shard: refresh the routing.
    #[error("shard {shard_id}: epoch or range does not match; current descriptors attached")]
    EpochNotMatch {
        /// The shard addressed.
        shard_id: u64,
        /// The fresh descriptors this node knows for the addressed range.
        current: Vec<ShardDescriptor>,
    },
    /// No replica of this shard lives on the node.
    #[error("shard {shard_id} is not on this node")]
    ShardNotFound {
        /// The shard.
        shard_id: u64,
    },
    /// The proposal was lost (leadership changed before it committed); it may be retried.
    #[error("shard {shard_id}: proposal dropped ({reason})")]
    ProposalDropped {
        /// The shard.
        shard_id: u64,
        /// Why.
        reason: &'static str,
    },
    /// The proposal was accepted but leadership changed before it was applied here: it may
    /// or may not take effect. Retry only what is idempotent, or read to find out.
    #[error("shard {shard_id}: outcome unknown ({reason})")]
    OutcomeUnknown {
        /// The shard.
        shard_id: u64,
        /// Why.
        reason: &'static str,
    },
    /// A check of the command did not hold: none of its writes applied. `current` is the
    /// key's live value when it was decided.
    #[error("shard {shard_id}: condition on key {} failed", String::from_utf8_lossy(.key))]
    ConditionFailed {
        /// The shard.
        shard_id: u64,
        /// The key checked.
        key: Vec<u8>,
        /// Its live value then.
        current: Option<Vec<u8>>,
    },
    /// The request is over a limit or malformed; it had no effect.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A later request of the same client slot applied before this one (see `crate::dedup`):
    /// the client gave up on this one. Not applied now; it may have been earlier.
    #[error("shard {shard_id}: request {seq} of client {client:x} slot {slot} superseded by request {last_seq}")]
    Superseded {
        /// The shard.
        shard_id: u64,
        /// The client.
        client: u64,
        /// Its slot.
        slot: u32,
        /// The request's number.
        seq: u64,
        /// The slot's last request applied.
        last_seq: u64,
    },
    /// A leadership transfer was refused.
    #[error("shard {shard_id}: leadership transfer to {to} refused: {reason}")]
    TransferRefused {
        /// The shard.
        shard_id: u64,
        /// The intended new leader.
        to: u64,
        /// Why.
        reason: String,
    },
    /// A joint-consensus swap of a learner and a voter was refused; nothing was proposed.
    #[error("shard {shard_id}: swap of learner {promote} in and voter {demote} out refused: {reason}")]
    SwapRefused {
        /// The shard.
        shard_id: u64,
        /// The learner to become a voter.
        promote: u64,
        /// The voter to become a learner.
        demote: u64,
        /// Why.
        reason: String,
    },
    /// This replica has not applied the checksum's log index yet: ask again later.
    #[error("shard {shard_id}: checksum at index {index} not ready here yet (applied {applied})")]
    ChecksumNotReady {
        /// The shard.
        shard_id: u64,
        /// The `ComputeChecksum` entry's index.
        index: u64,
        /// This replica's applied index.
        applied: u64,
    },
    /// This replica applied past the checksum's log index without its data pinned there (it
    /// caught up by snapshot, a newer checksum replaced it, the pin expired, or the command
    /// was refused at apply): this round cannot be checked here; start a new one.
    #[error("shard {shard_id}: no data pinned at index {index} here (applied past it); start a new checksum round")]
    ChecksumMissed {
        /// The shard.
        shard_id: u64,
        /// The `ComputeChecksum` entry's index.
        index: u64,
    },
    /// The node's mailbox, or its queue of reads waiting for a read thread, is full; back
    /// off and retry.
    #[error("node busy: mailbox or read queue full")]
    Busy,
    /// The node's loop has made no progress for `max-mailbox-wait-ms` or more (its disk is
    /// stalled), or did not take the request within it: nothing was done (a waiting write
    /// was withdrawn before it was proposed). Another replica may serve it.
    #[error("node unresponsive: its replication loop made no progress for {silent_ms} ms; nothing was done")]
    Unresponsive {
        /// How long the loop has made no progress, ms.
        silent_ms: u64,
    },
    /// The node is shutting down or stopped.
    #[error("node stopped")]
    Stopped,
    /// An engine write failed on this node: it only hands its leaderships away before it
    /// stops (fail-stop); nothing was done. Another replica may serve the request.
    #[error("this node's disk failed; it hands its leaderships away and stops; nothing was done")]
    DiskFailed,
    /// Invalid settings.
    #[error("invalid replication configuration: {0}")]
    Config(String),
    /// The storage engine failed.
    #[error("storage: {0}")]
    Engine(String),
    /// Bytes from disk or the network that do not decode.
    #[error("corrupt {what}: {reason}")]
    Corrupt {
        /// What was being decoded.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// raft-rs refused an operation.
    #[error("raft: {0}")]
    Raft(String),
    /// The node's own thread could not start.
    #[error("starting the node's thread: {0}")]
    Thread(String),
}

impl From<presage_engine::EngineError> for Error {
    fn from(e: presage_engine::EngineError) -> Self {
        Error::Engine(e.to_string())
    }
}

impl From<raft::Error> for Error {
    fn from(e: raft::Error) -> Self {
        Error::Raft(e.to_string())
    }
}

impl Error {
    /// True for errors a client should answer by refreshing its routing and retrying.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::NotLeader { .. }
                | Error::EpochNotMatch { .. }
                | Error::ProposalDropped { .. }
                | Error::OutcomeUnknown { .. }
                | Error::Busy
                | Error::Unresponsive { .. }
                | Error::DiskFailed
        )
    }

    /// True when the request certainly had no effect (a write that failed this way was never
    /// applied anywhere).
    pub fn is_definite(&self) -> bool {
        !matches!(self, Error::OutcomeUnknown { .. } | Error::Superseded { .. } | Error::Stopped | Error::Engine(_))
    }
}

impl From<crate::wire::Corrupt> for Error {
    fn from(e: crate::wire::Corrupt) -> Self {
        Error::Corrupt { what: e.what, reason: e.reason }
    }
}
