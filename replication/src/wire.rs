//! Messages that cross the network or sit on disk, as prost messages (one prost: 0.11, the
//! version raft-rs uses).
//!
//! Prost messages (prost 0.11, raft-rs's): `ShardDescriptor` (range, `Epoch`, replicas),
//! `EntryCommand`/`Op` (the data of a normal entry: puts, optionally with a deadline, deletes, range
//! deletes, `Check`s and the sweep's `DeleteExpired`, with the proposer's `now_ms`; or a `Split`, a
//! merge step or `compute_checksum`), `RaftEnvelope` (a Raft message, or a snapshot chunk or
//! acknowledgement, plus the sender's descriptor; or a `quiesce` heartbeat or a node-level `ping`),
//! `RaftLocalState`, `ApplyState`, `SnapshotData`.

use presage_engine::KeyRange;
use raft::eraftpb;

/// Version of a shard: `version` grows on split/merge, `conf_ver` on membership change.
#[derive(Clone, Copy, PartialEq, Eq, Hash, prost::Message)]
pub struct Epoch {
    /// Bumped by every split and merge.
    #[prost(uint64, tag = "1")]
    pub version: u64,
    /// Bumped by every membership change.
    #[prost(uint64, tag = "2")]
    pub conf_ver: u64,
}

/// Whether a replica votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ReplicaRole {
    /// Votes and counts toward quorum.
    Voter = 0,
    /// Receives the log, never votes.
    Learner = 1,
}

/// One copy of a shard. A node holds at most one replica of a shard, so the node id is also
/// the replica's Raft id.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct Replica {
    /// The node holding it.
    #[prost(uint64, tag = "1")]
    pub node_id: u64,
    /// Voter or learner.
    #[prost(enumeration = "ReplicaRole", tag = "2")]
    pub role: i32,
}

impl Replica {
    /// A voter on `node_id`.
    pub fn voter(node_id: u64) -> Self {
        Replica { node_id, role: ReplicaRole::Voter as i32 }
    }

    /// A learner on `node_id`.
    pub fn learner(node_id: u64) -> Self {
        Replica { node_id, role: ReplicaRole::Learner as i32 }
    }

    /// True for a voter.
    pub fn is_voter(&self) -> bool {
        self.role == ReplicaRole::Voter as i32
    }
}

/// A shard: its key range, epoch and replicas.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct ShardDescriptor {
    /// Shard id (0 is the meta shard).
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Inclusive start key.
    #[prost(bytes = "vec", tag = "2")]
    pub start: Vec<u8>,
    /// Exclusive end key; absent for the last shard.
    #[prost(bytes = "vec", optional, tag = "3")]
    pub end: Option<Vec<u8>>,
    /// Current epoch.
    #[prost(message, optional, tag = "4")]
    pub epoch: Option<Epoch>,
    /// Replicas.
    #[prost(message, repeated, tag = "5")]
    pub replicas: Vec<Replica>,
    /// Set while the shard is frozen to merge into this shard (see [`PrepareMerge`]): it
    /// serves no reads or writes until the merge commits or rolls back.
    #[prost(uint64, optional, tag = "6")]
    pub merging_into: Option<u64>,
}

/// A message, or a field of one, read from disk or the network that does not decode (the
/// crate's `Error::Corrupt` once it leaves this module).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt {what}: {reason}")]
pub struct Corrupt {
    /// What it was.
    pub what: &'static str,
    /// Why it does not decode.
    pub reason: String,
}

impl ShardDescriptor {
    /// The key range.
    pub fn range(&self) -> std::result::Result<KeyRange, Corrupt> {
        KeyRange::new(self.start.clone(), self.end.clone())
            .map_err(|e| Corrupt { what: "shard descriptor", reason: e.to_string() })
    }

    /// Does the shard hold `key`?
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|end| key < end)
    }

    /// The epoch (zero when absent).
    pub fn epoch(&self) -> Epoch {
        self.epoch.unwrap_or_default()
    }

    /// Do the two shards' key ranges intersect?
    pub fn overlaps(&self, other: &ShardDescriptor) -> bool {
        let starts_before_other_ends = other.end.as_deref().is_none_or(|e| self.start.as_slice() < e);
        let other_starts_before_end = self.end.as_deref().is_none_or(|e| other.start.as_slice() < e);
        starts_before_other_ends && other_starts_before_end
    }

    /// Raft voter and learner ids.
    pub fn conf_state(&self) -> eraftpb::ConfState {
        let voters = self.replicas.iter().filter(|r| r.is_voter()).map(|r| r.node_id);
        let learners = self.replicas.iter().filter(|r| !r.is_voter()).map(|r| r.node_id);
        eraftpb::ConfState::from((voters, learners))
    }
}

/// One write of a command.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Op {
    /// What to do.
    #[prost(oneof = "op::Kind", tags = "1, 2, 3, 4, 5, 6")]
    pub kind: Option<op::Kind>,
}

/// The kinds of [`Op`].
pub mod op {
    /// A single write.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// Set a key.
        #[prost(message, tag = "1")]
        Put(super::Put),
        /// Remove a key.
        #[prost(message, tag = "2")]
        Delete(super::Delete),
        /// Remove a key range.
        #[prost(message, tag = "3")]
        DeleteRange(super::DeleteRange),
        /// A condition on a key: if any check of a command fails, none of its writes apply.
        #[prost(message, tag = "4")]
        Check(super::Check),
        /// Remove a key if its value has expired (the sweep's delete: it never removes a
        /// value written since the sweep looked).
        #[prost(message, tag = "5")]
        DeleteExpired(super::Delete),
        /// Drop a request record its slot has not refreshed for `dedup::RECORD_TTL_MS` (the
        /// sweep's; it never drops a record written since the sweep looked).
        #[prost(message, tag = "6")]
        ForgetRequest(super::SlotRecord),
    }
}

/// Set `key` to `value`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Put {
    /// Key.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// Value.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
    /// When the value expires (Unix ms), if ever.
    #[prost(uint64, optional, tag = "3")]
    pub deadline_ms: Option<u64>,
}

/// What a [`Check`] expects of its key's live value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Expect {
    /// No live value.
    Absent = 0,
    /// Some live value.
    Present = 1,
    /// A live value equal to `Check::value`.
    Equals = 2,
    /// A live value equal to `Check::value` whose deadline is `Check::deadline_ms` (none:
    /// it does not expire). A read-modify-write that keeps or changes the expiry checks this.
    Exactly = 3,
}

/// A condition on `key`, evaluated at apply against the key's value as of the command's
/// `now_ms` (an expired value is absent). Checks see the writes of earlier commands, never
/// those of their own command: every check of a command runs before any of its writes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Check {
    /// Key.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// What is expected.
    #[prost(enumeration = "Expect", tag = "2")]
    pub expect: i32,
    /// The expected value, for [`Expect::Equals`] and [`Expect::Exactly`].
    #[prost(bytes = "vec", tag = "3")]
    pub value: Vec<u8>,
    /// The expected deadline (Unix ms), for [`Expect::Exactly`].
    #[prost(uint64, optional, tag = "4")]
    pub deadline_ms: Option<u64>,
}

/// Remove `key`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Delete {
    /// Key.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
}

/// Remove `[start, end)` (to the shard's end when `end` is absent).
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeleteRange {
    /// Inclusive start.
    #[prost(bytes = "vec", tag = "1")]
    pub start: Vec<u8>,
    /// Exclusive end.
    #[prost(bytes = "vec", optional, tag = "2")]
    pub end: Option<Vec<u8>>,
}

impl Op {
    /// A put.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Op { kind: Some(op::Kind::Put(Put { key: key.into(), value: value.into(), deadline_ms: None })) }
    }

    /// A put of a value that expires at `deadline_ms` (Unix ms).
    pub fn put_expiring(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, deadline_ms: u64) -> Self {
        Op { kind: Some(op::Kind::Put(Put { key: key.into(), value: value.into(), deadline_ms: Some(deadline_ms) })) }
    }

    /// A check (see [`Check`]); `value` matters for [`Expect::Equals`] only.
    pub fn check(key: impl Into<Vec<u8>>, expect: Expect, value: impl Into<Vec<u8>>) -> Self {
        let check = Check { key: key.into(), expect: expect as i32, value: value.into(), deadline_ms: None };
        Op { kind: Some(op::Kind::Check(check)) }
    }

    /// A check that `key` holds exactly `value` with `deadline_ms` ([`Expect::Exactly`]).
    pub fn check_exactly(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, deadline_ms: Option<u64>) -> Self {
        let check = Check { key: key.into(), expect: Expect::Exactly as i32, value: value.into(), deadline_ms };
        Op { kind: Some(op::Kind::Check(check)) }
    }

    /// The sweep's delete of an expired value.
    pub fn delete_expired(key: impl Into<Vec<u8>>) -> Self {
        Op { kind: Some(op::Kind::DeleteExpired(Delete { key: key.into() })) }
    }

    /// A delete.
    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        Op { kind: Some(op::Kind::Delete(Delete { key: key.into() })) }
    }

    /// A range delete.
    pub fn delete_range(start: impl Into<Vec<u8>>, end: Option<Vec<u8>>) -> Self {
        Op { kind: Some(op::Kind::DeleteRange(DeleteRange { start: start.into(), end })) }
    }
}

/// A replicated command: the data of one normal log entry. All its ops apply atomically.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EntryCommand {
    /// The shard it was proposed to.
    #[prost(uint64, tag = "1")]
    pub shard_id: u64,
    /// The shard epoch the client routed with.
    #[prost(message, optional, tag = "2")]
    pub epoch: Option<Epoch>,
    /// The writes.
    #[prost(message, repeated, tag = "3")]
    pub ops: Vec<Op>,
    /// An admin command instead of writes: split the shard.
    #[prost(message, optional, tag = "4")]
    pub split: Option<Split>,
    /// An admin command instead of writes: freeze this shard to merge it into a neighbour.
    #[prost(message, optional, tag = "5")]
    pub prepare_merge: Option<PrepareMerge>,
    /// An admin command instead of writes: take over a frozen neighbour.
    #[prost(message, optional, tag = "6")]
    pub commit_merge: Option<CommitMerge>,
    /// An admin command instead of writes: unfreeze this shard (its merge did not commit).
    #[prost(bool, tag = "7")]
    pub rollback_merge: bool,
    /// The proposing leader's wall clock (Unix ms): checks and expiry at apply use it, so
    /// every replica decides alike.
    #[prost(uint64, tag = "8")]
    pub now_ms: u64,
    /// An admin command instead of writes: every replica pins an engine snapshot of its data
    /// exactly as of this entry's index, for a range checksum (`NodeHandle::compute_checksum`,
    /// `NodeHandle::replica_checksum`). Changes no data.
    #[prost(bool, tag = "9")]
    pub compute_checksum: bool,
    /// Who sent the write and which of its requests it is: a retry carries the same id and
    /// applies at most once (see `crate::dedup`). Absent for writes nobody retries.
    #[prost(message, optional, tag = "10")]
    pub request_id: Option<RequestId>,
}

/// A client's name for one write, kept by its retries. A client runs its writes in `slot`s,
/// one request at a time per slot, and numbers each slot's requests with a growing `seq`: so
/// a shard needs only the last `seq` it applied per (client, slot) to know whether a write is
/// new, a retry of one it applied, or older than one it applied.
#[derive(Clone, Copy, PartialEq, Eq, Hash, prost::Message)]
pub struct RequestId {
    /// The client (a random id drawn when it starts).
    #[prost(uint64, tag = "1")]
    pub client: u64,
    /// The client's slot.
    #[prost(uint32, tag = "2")]
    pub slot: u32,
    /// The slot's request number.
    #[prost(uint64, tag = "3")]
    pub seq: u64,
}

/// What a shard remembers of one (client, slot): the last request it decided from it, when
/// (the deciding command's `now_ms`), and whether its condition failed (nothing written).
#[derive(Clone, Copy, PartialEq, Eq, Hash, prost::Message)]
pub struct SlotRecord {
    /// The client.
    #[prost(uint64, tag = "1")]
    pub client: u64,
    /// The slot.
    #[prost(uint32, tag = "2")]
    pub slot: u32,
    /// The last `seq` applied.
    #[prost(uint64, tag = "3")]
    pub last_seq: u64,
    /// The `now_ms` of the command that decided it.
    #[prost(uint64, tag = "4")]
    pub last_ms: u64,
    /// Its condition failed: it wrote nothing, and never will.
    #[prost(bool, tag = "5")]
    pub failed: bool,
}

/// Merge, step 1, on the source shard: freeze it (epoch version + 1, `merging_into` set).
/// From then on it takes no writes, reads or membership changes, so every replica's data
/// for its range is final once it applied this entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PrepareMerge {
    /// The adjacent shard that will take the range over, with the same voters.
    #[prost(message, optional, tag = "1")]
    pub target: Option<ShardDescriptor>,
}

/// Merge, step 2, on the target shard: extend the range over the frozen source (epoch version
/// = max of both + 1) and destroy the source's replica on each node, leaving its data in
/// place. A replica applies it only once its node's source replica applied the
/// `PrepareMerge` (`source` equals that replica's descriptor); until then its apply waits.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CommitMerge {
    /// The source as frozen by its `PrepareMerge`.
    #[prost(message, optional, tag = "1")]
    pub source: Option<ShardDescriptor>,
}

/// Split a shard at `split_key`: it keeps `[start, split_key)`, a new shard `new_shard_id`
/// takes `[split_key, end)` with the same replicas, and both get epoch version + 1. The data
/// stays where it is (data keys are not prefixed by shard), so a split is a metadata change.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Split {
    /// First key of the new right-hand shard; strictly inside the shard.
    #[prost(bytes = "vec", tag = "1")]
    pub split_key: Vec<u8>,
    /// Id of the new shard, unique in the cluster (the shard manager allocates it).
    #[prost(uint64, tag = "2")]
    pub new_shard_id: u64,
}

/// Persistent Raft state of a replica besides its log.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RaftLocalState {
    /// Term, vote, commit.
    #[prost(message, optional, tag = "1")]
    pub hard_state: Option<eraftpb::HardState>,
    /// Index of the last log entry.
    #[prost(uint64, tag = "2")]
    pub last_index: u64,
    /// Term of the last log entry.
    #[prost(uint64, tag = "3")]
    pub last_term: u64,
}

/// How far a replica has applied its log; written atomically with the applied data.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ApplyState {
    /// Last applied index.
    #[prost(uint64, tag = "1")]
    pub applied_index: u64,
    /// Log entries up to here are compacted away.
    #[prost(uint64, tag = "2")]
    pub truncated_index: u64,
    /// Term of the entry at `truncated_index`.
    #[prost(uint64, tag = "3")]
    pub truncated_term: u64,
    /// Term of the entry at `applied_index`.
    #[prost(uint64, tag = "4")]
    pub applied_term: u64,
    /// Membership as of `applied_index` (joint states included).
    #[prost(message, optional, tag = "5")]
    pub conf_state: Option<eraftpb::ConfState>,
}

/// What travels inside a Raft snapshot message: only the description, the data is streamed
/// separately as export chunks.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotData {
    /// The shard as of the snapshot.
    #[prost(message, optional, tag = "1")]
    pub descriptor: Option<ShardDescriptor>,
    /// The shard's request records as of the snapshot (at most
    /// `dedup::MAX_RECORDS_PER_SHARD`), so that a retry reaching the receiver later still
    /// applies once.
    #[prost(message, repeated, tag = "2")]
    pub requests: Vec<SlotRecord>,
}

/// A Raft message for one replica, with what the receiving node needs to route it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RaftEnvelope {
    /// The shard.
    #[prost(uint64, tag = "1")]
    pub shard_id: u64,
    /// Sending node.
    #[prost(uint64, tag = "2")]
    pub from_node: u64,
    /// Receiving node.
    #[prost(uint64, tag = "3")]
    pub to_node: u64,
    /// The sender's view of the shard (lets a node create a replica it was just added as).
    /// Carried by heartbeats, snapshots, tombstones and probes, and by appends to a replica
    /// the leader has not heard from yet; not by the rest (see `epoch`).
    #[prost(message, optional, tag = "4")]
    pub descriptor: Option<ShardDescriptor>,
    /// The Raft message.
    #[prost(message, optional, tag = "5")]
    pub message: Option<eraftpb::Message>,
    /// A chunk of snapshot data, leader to receiver.
    #[prost(message, optional, tag = "6")]
    pub snapshot_chunk: Option<SnapshotChunk>,
    /// How far the receiver got, receiver to leader.
    #[prost(message, optional, tag = "7")]
    pub snapshot_ack: Option<SnapshotAck>,
    /// "You were removed from this shard": `descriptor` is the newer configuration.
    #[prost(bool, tag = "8")]
    pub tombstone: bool,
    /// `message` is the leader's last heartbeat before its group goes quiescent: a caught-up
    /// follower stops ticking the shard too.
    #[prost(bool, tag = "9")]
    pub quiesce: bool,
    /// A node-level liveness ping (no shard): quiescent groups do not heartbeat, so nodes ping
    /// the nodes they share sleeping groups with, and wake those groups when a node falls silent.
    #[prost(bool, tag = "10")]
    pub ping: bool,
    /// The sender's epoch of the shard, on every Raft message (tells a replica that a sender
    /// outside its configuration is newer, or was removed).
    #[prost(message, optional, tag = "11")]
    pub epoch: Option<Epoch>,
    /// The sender's clock as the envelope left (Unix ms; 0: not stamped), for its peers'
    /// estimate of it (`crate::clock`).
    #[prost(uint64, tag = "12")]
    pub clock_ms: u64,
    /// With `tombstone`: the shard was merged away. `descriptor` is then not the shard's but
    /// the sender's replica of the shard that now holds the merged shard's start key (see
    /// `Store::probe_merged`).
    #[prost(bool, tag = "13")]
    pub merged: bool,
}

impl RaftEnvelope {
    /// The sender's `conf_ver` of the shard (0 when it sent none).
    pub fn sender_conf_ver(&self) -> u64 {
        self.epoch.or_else(|| self.descriptor.as_ref().map(ShardDescriptor::epoch)).map_or(0, |e| e.conf_ver)
    }
}

/// One export chunk of the data behind Raft snapshot `index` (the export's stream id).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotChunk {
    /// Raft index of the snapshot.
    #[prost(uint64, tag = "1")]
    pub index: u64,
    /// The chunk, as `presage_engine::transfer` frames it (crc32-checked, zstd-compressed).
    #[prost(bytes = "vec", tag = "2")]
    pub frame: Vec<u8>,
}

/// The receiver's resume point for snapshot `index`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotAck {
    /// Raft index of the snapshot.
    #[prost(uint64, tag = "1")]
    pub index: u64,
    /// The next chunk the receiver needs.
    #[prost(uint64, tag = "2")]
    pub next_seq: u64,
    /// The last key it staged.
    #[prost(bytes = "vec", optional, tag = "3")]
    pub after_key: Option<Vec<u8>>,
    /// The whole stream arrived and verified.
    #[prost(bool, tag = "4")]
    pub ended: bool,
}

/// Decodes a prost message read from disk or the network, naming what it is on failure.
pub fn decode<M: prost::Message + Default>(what: &'static str, bytes: &[u8]) -> std::result::Result<M, Corrupt> {
    M::decode(bytes).map_err(|e| Corrupt { what, reason: e.to_string() })
}

/// Encodes a prost message.
pub fn encode<M: prost::Message>(m: &M) -> Vec<u8> {
    m.encode_to_vec()
}
