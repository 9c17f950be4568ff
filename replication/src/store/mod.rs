//! `Store`: every replica on a node, driven together. Its code is split by operation: `step`
//! (incoming messages), `ready` (the ready round), `quiesce` (ticks and sleeping groups),
//! `snapshots` (transfers from this node), `checksum` (pins), `reads` (reads and the read
//! pool), `lifecycle` (replicas created, destroyed, probed); this file holds the state and
//! the requests' entry points.
//!
//! The store is a synchronous state machine with no I/O besides its engine: the node runtime
//! (`runtime.rs`) feeds it ticks, messages and requests and sends what it returns. One call to
//! [`Store::process_ready`] handles the ready state of every replica:
//!
//! 1. messages a leader may send before persisting go out at once, before the fsync;
//! 2. already-persisted committed entries are applied in an unsynced batch and acknowledged -
//!    the apply state travels with the data it describes, so a crash replays exactly the
//!    unapplied suffix;
//! 3. every replica's new log entries and hard state go into **one** engine batch, handed to
//!    the log writer (`log_writer.rs`), which syncs it off the loop (group commit across
//!    rounds); when it is durable, the messages that had to wait go, and the entries it made
//!    committable come in the next round;
//! 4. callbacks of served reads run last.
//!
//! (`ready.rs` walks through it.) Right after
//! each batch write, every replica that applied a `ComputeChecksum` into it gets one shared engine
//! snapshot as its checksum pin `(index, range, snapshot)`: the newest only, dropped on a Raft
//! snapshot install, after `CHECKSUM_PIN_MAX_AGE_SECS` (a RocksDB snapshot holds back compaction)
//! or with the replica; in-memory, so a restart replays the log and pins again. Raft learns the
//! applied index through `advance_apply_to` every round, which is also where raft-rs appends the
//! automatic leave of a joint configuration. A sleeping replica with entries waiting to apply or a
//! new ready is visited again next round. Holds `MsgSnapshot`s back for the snapshot transfer.
//! Quiescence: only `active` replicas are ticked and visited; an idle, fully replicated leader
//! sends `quiesce` heartbeats and its group sleeps; nodes sharing sleeping groups ping each other
//! once per heartbeat interval and wake the groups of a node silent for an election timeout. Starts
//! the shards splits create (the parent's leader's new replica campaigns at once) and never creates
//! a replica from a message whose range overlaps a local replica (a split not applied here yet). A
//! snapshot never covers a live local replica's range, except a source frozen into that shard,
//! whose metadata its install destroys (the merge finishes there by snapshot).

mod checksum;
mod fail_stop;
mod leadership;
mod lifecycle;
mod log_writer;
mod quiesce;
mod reads;
mod ready;
mod recover;
mod snapshots;
mod step;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use presage_engine::{for_each_pair, Cf, Engine, KeyRange, Reader, WriteBatch, WriteOptions};
use raft::eraftpb::{ConfChangeV2, Message, MessageType};
use raft::{SnapshotStatus, StateRole};

use crate::config::RaftConfig;
use crate::error::{Error, Result};
use crate::keys;
use crate::lease::LeaseViews;
use crate::local_read::LocalReader;
use crate::peer::{
    AdminEntry, Applied, ChecksumPin, Completions, IndexCallback, Peer, ReadCallback, ReadRequest, WriteCallback,
};
use crate::snapshot::{self, AckOutcome, OutgoingSnapshot};
use crate::storage::PeerStorage;
use crate::wire::{self, Epoch, Op, RaftEnvelope, RequestId, ShardDescriptor, SnapshotData};
pub use log_writer::MAX_QUEUED_LOG_JOBS;

/// Ticks between two pages of each leader's expiry sweep (see [`Peer::sweep_expired`]).
const SWEEP_EVERY_TICKS: u64 = 10;
/// Ticks between two pages of each leader's walk of its request records (see
/// [`Peer::sweep_requests`]); a multiple of `SWEEP_EVERY_TICKS`.
const REQUEST_SWEEP_EVERY_TICKS: u64 = 60 * SWEEP_EVERY_TICKS;
/// Keys one page of the expiry sweep reads.
const SWEEP_PAGE_KEYS: usize = 256;
/// How long a replica keeps the engine snapshot pinned for a range checksum, in seconds
/// (on RocksDB a held snapshot keeps every version it sees from being compacted away).
pub const CHECKSUM_PIN_MAX_AGE_SECS: u64 = 60;

/// A replica's data as of a log index, pinned for a range checksum (see
/// [`Store::checksum_pin`]). Cheap to clone; the scan belongs off the node's task.
#[derive(Clone)]
pub struct PinnedData {
    /// Index of the `ComputeChecksum` entry it was pinned at.
    pub index: u64,
    /// The shard's range at that index.
    pub range: KeyRange,
    /// The engine exactly as of that index.
    pub reader: Arc<dyn Reader + Send + Sync>,
}

/// A replica's state, for operators and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardStatus {
    /// The shard.
    pub descriptor: ShardDescriptor,
    /// Leader this replica knows of.
    pub leader: Option<u64>,
    /// This replica's role.
    pub role: StateRole,
    /// Current term.
    pub term: u64,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// First index still in the log.
    pub first_index: u64,
    /// Last index in the log.
    pub last_index: u64,
    /// The group sleeps (see [`Store`] on quiescence).
    pub quiescent: bool,
    /// On a leader: the lowest commit index its replicas (itself included) have reported.
    pub replicas_committed: Option<u64>,
    /// On a leader: each replica's node and the highest log index known to match the
    /// leader's (how far a learner caught up), by node.
    pub matched: Vec<(u64, u64)>,
}

impl ShardStatus {
    /// True when this replica leads its shard.
    pub fn is_leader(&self) -> bool {
        self.role == StateRole::Leader
    }
}

/// Counts over every replica of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreSummary {
    /// Replicas on the node.
    pub replicas: usize,
    /// Replicas that lead their shard.
    pub leaders: usize,
    /// Replicas that sleep.
    pub quiescent: usize,
    /// The snapshot bandwidth budget now, in bytes per second (see [`Store::set_snapshot_rate`]).
    pub snapshot_rate_bytes_per_sec: u64,
    /// Snapshot data sent since the store opened, in bytes.
    pub snapshot_bytes_sent: u64,
    /// Snapshot transfers this node is sending now.
    pub snapshots_outgoing: usize,
    /// The median of the clocks this node hears (its own included) minus its own
    /// (`crate::clock`), in ms: positive when it is behind; `None` without fresh readings.
    pub clock_offset_ms: Option<i64>,
    /// The clock is further than `max-clock-offset-ms` from its peers': no leased reads.
    pub clock_out_of_sync: bool,
    /// Reads served by a follower replica here (replica reads) since the store opened.
    pub replica_reads_served: u64,
}

/// Nodes remembered as asked about one replica ([`Store::probe_stale`]).
const MAX_PROBED_PER_SHARD: usize = 16;

/// All replicas of one node.
///
/// **Quiescence.** A leader whose group stayed idle for `quiesce_after_ticks` with everything
/// replicated, committed and applied sends each follower a last heartbeat marked `quiesce`;
/// both sides then stop ticking the group and the store stops visiting it, so idle groups
/// cost nothing per tick. Any request or meaningful message wakes the group. Because a
/// sleeping leader sends no heartbeats, nodes instead ping each other (one message per node
/// pair per heartbeat interval, whatever the number of groups) and wake every sleeping group
/// shared with a node that stays silent for an election timeout; its followers then elect a
/// new leader as usual (failover of a sleeping group takes up to two election timeouts).
pub struct Store<E: Engine> {
    node_id: u64,
    engine: E,
    config: RaftConfig,
    peers: BTreeMap<u64, Peer<E>>,
    /// Snapshot transfers this node is sending.
    outgoing: Vec<OutgoingSnapshot<E>>,
    /// Bytes of snapshot data this node may still send (refilled every tick).
    snapshot_budget_bytes: i64,
    /// The budget's refill rate, in bytes per second: `snapshot_rate_bytes_per_sec` unless a
    /// governor lowered it ([`Store::set_snapshot_rate`]).
    snapshot_rate_bytes_per_sec: u64,
    /// Snapshot data sent since the store opened, in bytes.
    snapshot_bytes_sent: u64,
    /// Reads served as a follower (replica reads) since the store opened.
    replica_reads_served: u64,
    /// Envelopes produced outside a ready round (acknowledgements, resends).
    pending_out: Vec<RaftEnvelope>,
    /// Replicas that are awake: ticked and visited by every ready round.
    active: BTreeSet<u64>,
    /// Sleeping replicas that received a message this round (visited by the next ready round
    /// only).
    touched: BTreeSet<u64>,
    /// Followers with replica reads waiting (aged each tick even while asleep).
    reading: BTreeSet<u64>,
    /// Ticks since the store opened.
    ticks: u64,
    /// The node's monotonic clock, as of the runtime's last [`Store::set_now`] (read leases).
    now: Instant,
    /// Tick at which each node was last heard from.
    last_heard: BTreeMap<u64, u64>,
    /// Nodes silent for longer than an election timeout.
    silent: BTreeSet<u64>,
    /// Nodes that share a sleeping group with this one (pinged every heartbeat interval);
    /// `None` when it must be recomputed.
    ping_targets: Option<Vec<u64>>,
    /// Descriptors of this node's replicas frozen for a merge (a `CommitMerge` of their
    /// target waits until its source appears here as it froze).
    frozen: BTreeMap<u64, ShardDescriptor>,
    /// Nodes asked about a replica by [`Store::probe_stale`], by shard: their tombstone counts
    /// even when they were not members of the replica's own configuration.
    probed: BTreeMap<u64, BTreeSet<u64>>,
    /// Replicas that may hold a checksum pin (checked for expiry every tick; entries whose
    /// replica or pin is gone are dropped then).
    pinned: BTreeSet<u64>,
    /// Replicas a tombstone condemned: destroyed at the end of the next ready round.
    condemned: BTreeSet<u64>,
    /// How the log is written (see `log_writer.rs`).
    log_writes: log_writer::LogWrites,
    /// The leases its leaders publish for reads off the loop (see `local_read.rs`).
    lease_views: Arc<LeaseViews>,
    /// An engine write failed: the node only hands its leaderships away, then stops
    /// (`fail_stop.rs`).
    failing: bool,
    /// Where served reads do their engine work (`reads.rs`); none: on the loop.
    read_pool: Option<crate::read_pool::ReadPool>,
}

impl<E: Engine> Store<E> {
    /// Opens the store of `node_id`, recovering every replica persisted in `engine`.
    pub fn open(node_id: u64, engine: E, config: RaftConfig) -> Result<Self> {
        config.validate()?;
        recover::finish_pending_snapshots(&engine, node_id)?;
        // A descriptor that does not decode is damage: starting without that replica would
        // let the cluster count on a copy this node silently dropped.
        let mut shard_ids = Vec::new();
        let mut undecodable = None;
        for_each_pair(&engine, Cf::Meta, &keys::descriptor_range(), |k, v| {
            match wire::decode::<ShardDescriptor>("shard descriptor", v) {
                Ok(d) => shard_ids.push(d.id),
                Err(e) => {
                    undecodable.get_or_insert_with(|| (k.to_vec(), e));
                }
            }
            Ok(())
        })?;
        if let Some((key, e)) = undecodable {
            tracing::error!(node = node_id, key = ?key, error = %e, "a stored shard descriptor does not decode");
            return Err(e.into());
        }
        let mut peers = BTreeMap::new();
        let clock =
            Arc::new(crate::clock::GroupClock::new(config.max_clock_offset_ms, config.clock_reading_max_age_ms));
        let lease_views = Arc::new(LeaseViews::with_clock(clock));
        for shard_id in shard_ids {
            if let Some(storage) = PeerStorage::load(engine.clone(), shard_id)? {
                peers.insert(shard_id, Peer::new(node_id, storage, &config, Arc::clone(&lease_views))?);
            }
        }
        tracing::info!(node = node_id, replicas = peers.len(), "store opened");
        let active = peers.keys().copied().collect();
        let frozen = peers
            .iter()
            .filter(|(_, p)| p.descriptor().merging_into.is_some())
            .map(|(id, p)| (*id, p.descriptor().clone()))
            .collect();
        let snapshot_rate_bytes_per_sec = config.snapshot_rate_bytes_per_sec;
        Ok(Store {
            node_id,
            engine,
            config,
            peers,
            outgoing: Vec::new(),
            snapshot_budget_bytes: 0,
            snapshot_rate_bytes_per_sec,
            snapshot_bytes_sent: 0,
            replica_reads_served: 0,
            pending_out: Vec::new(),
            active,
            touched: BTreeSet::new(),
            reading: BTreeSet::new(),
            ticks: 0,
            now: Instant::now(),
            last_heard: BTreeMap::new(),
            silent: BTreeSet::new(),
            ping_targets: None,
            frozen,
            pinned: BTreeSet::new(),
            condemned: BTreeSet::new(),
            log_writes: log_writer::LogWrites::Inline,
            probed: BTreeMap::new(),
            lease_views,
            failing: false,
            read_pool: None,
        })
    }

    /// The leases this store's leaders publish, for a [`crate::local_read::LocalReader`].
    pub fn lease_views(&self) -> Arc<LeaseViews> {
        Arc::clone(&self.lease_views)
    }

    /// The node's clock for expiry (its skew can be set: tests, fault injection).
    pub fn clock(&self) -> Arc<crate::clock::GroupClock> {
        Arc::clone(&self.lease_views.clock)
    }

    /// A reader of this store's engine under its leaders' leases.
    pub fn local_reader(&self) -> LocalReader {
        LocalReader::new(self.lease_views(), self.engine.clone())
    }

    /// Advances the store's clock (monotonic: an earlier instant is ignored). The runtime
    /// calls it before each round.
    pub fn set_now(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Creates a brand-new shard replica from `descriptor` (cluster bootstrap): every listed
    /// replica must be bootstrapped with the same descriptor.
    pub fn bootstrap_shard(&mut self, descriptor: ShardDescriptor) -> Result<()> {
        self.bootstrap_shards(vec![descriptor])
    }

    /// Creates several brand-new shard replicas with one synced write; all or none.
    pub fn bootstrap_shards(&mut self, descriptors: Vec<ShardDescriptor>) -> Result<()> {
        let mut ids = BTreeSet::new();
        for d in &descriptors {
            if self.peers.contains_key(&d.id) || !ids.insert(d.id) {
                return Err(Error::Config(format!("shard {} already exists on node {}", d.id, self.node_id)));
            }
            d.range()?;
            if !d.replicas.iter().any(|r| r.node_id == self.node_id) {
                return Err(Error::Config(format!("node {} is not a replica of shard {}", self.node_id, d.id)));
            }
        }
        let mut wb = WriteBatch::new();
        let storages: Vec<_> =
            descriptors.into_iter().map(|d| PeerStorage::initial(self.engine.clone(), d, &mut wb)).collect();
        self.engine.write(&wb, WriteOptions::SYNC)?;
        for storage in storages {
            let shard_id = storage.shard_id();
            self.peers.insert(shard_id, Peer::new(self.node_id, storage, &self.config, Arc::clone(&self.lease_views))?);
            self.active.insert(shard_id);
        }
        Ok(())
    }

    /// Counts over every replica.
    pub fn summary(&self) -> StoreSummary {
        StoreSummary {
            replicas: self.peers.len(),
            leaders: self.peers.values().filter(|p| p.is_leader()).count(),
            quiescent: self.peers.len() - self.active.len(),
            snapshot_rate_bytes_per_sec: self.snapshot_rate_bytes_per_sec,
            snapshot_bytes_sent: self.snapshot_bytes_sent,
            replica_reads_served: self.replica_reads_served,
            snapshots_outgoing: self.outgoing.len(),
            clock_offset_ms: self.lease_views.clock.offset_ms(),
            clock_out_of_sync: self.lease_views.clock.out_of_sync(),
        }
    }

    /// Sets the snapshot bandwidth budget, clamped to
    /// `[snapshot_rate_floor_bytes_per_sec, snapshot_rate_bytes_per_sec]`; returns the rate
    /// set. Takes effect at the next tick's refill.
    pub fn set_snapshot_rate(&mut self, bytes_per_sec: u64) -> u64 {
        let rate = bytes_per_sec.clamp(self.config.snapshot_rate_floor(), self.config.snapshot_rate_bytes_per_sec);
        self.snapshot_rate_bytes_per_sec = rate;
        rate
    }

    /// Proposes a write to `shard_id` (applied at most once per `request_id`, see
    /// `crate::dedup`).
    pub fn propose(
        &mut self,
        shard_id: u64,
        epoch: Epoch,
        ops: Vec<Op>,
        request_id: Option<RequestId>,
        cb: WriteCallback,
    ) {
        self.wake_leader(shard_id);
        match self.peers.get_mut(&shard_id) {
            Some(peer) => peer.propose(epoch, ops, request_id, cb),
            None => cb(Err(Error::ShardNotFound { shard_id })),
        }
    }

    /// Proposes an admin command to `shard_id` (split, merge steps); `cb` runs once it is
    /// applied on this node (for a split, with the new shard's replica here started).
    pub fn propose_admin(&mut self, shard_id: u64, epoch: Epoch, admin: AdminEntry, cb: WriteCallback) {
        self.wake_leader(shard_id);
        if let AdminEntry::Split(split) = &admin {
            let known = self.peers.contains_key(&split.new_shard_id)
                || matches!(self.engine.get(Cf::Meta, &keys::tombstone_key(split.new_shard_id)), Ok(Some(_)));
            if known {
                let e = Error::Config(format!(
                    "shard id {} is already in use on node {}",
                    split.new_shard_id, self.node_id
                ));
                return cb(Err(e));
            }
        }
        match self.peers.get_mut(&shard_id) {
            Some(peer) => peer.propose_admin(epoch, admin, cb),
            None => cb(Err(Error::ShardNotFound { shard_id })),
        }
    }

    /// Proposes a `ComputeChecksum` to `shard_id` (this node must lead it); `cb` gets the
    /// entry's index once it is applied here, by when this replica's data at that index is
    /// pinned (see [`Store::checksum_pin`]).
    pub fn propose_checksum(&mut self, shard_id: u64, epoch: Epoch, cb: IndexCallback) {
        self.wake_leader(shard_id);
        match self.peers.get_mut(&shard_id) {
            Some(peer) => peer.propose_checksum(epoch, cb),
            None => cb(Err(Error::ShardNotFound { shard_id })),
        }
    }

    /// Swaps learner `promote` in and voter `demote` out of `shard_id` in one joint-consensus
    /// change (this node must lead it); `cb` runs once the joint configuration is left here
    /// (see [`Peer::swap_replicas`]).
    pub fn swap_replicas(&mut self, shard_id: u64, promote: u64, demote: u64, cb: WriteCallback) {
        self.wake_leader(shard_id);
        match self.peers.get_mut(&shard_id) {
            Some(peer) => peer.swap_replicas(promote, demote, cb),
            None => cb(Err(Error::ShardNotFound { shard_id })),
        }
    }

    /// Proposes a membership change of `shard_id`.
    pub fn propose_conf_change(&mut self, shard_id: u64, cc: ConfChangeV2, cb: WriteCallback) {
        self.wake_leader(shard_id);
        match self.peers.get_mut(&shard_id) {
            Some(peer) => peer.propose_conf_change(cc, cb),
            None => cb(Err(Error::ShardNotFound { shard_id })),
        }
    }

    /// The state of the replica of `shard_id`.
    pub fn status(&self, shard_id: u64) -> Option<ShardStatus> {
        let p = self.peers.get(&shard_id)?;
        Some(ShardStatus {
            descriptor: p.descriptor().clone(),
            leader: p.leader(),
            role: p.raw.raft.state,
            term: p.raw.raft.term,
            commit: p.raw.raft.raft_log.committed,
            applied: p.raw.store().applied_index(),
            first_index: p.raw.store().first_log_index(),
            last_index: p.raw.store().last_log_index(),
            quiescent: p.quiescent,
            replicas_committed: p
                .is_leader()
                .then(|| p.raw.raft.prs().iter().map(|(_, pr)| pr.committed_index).min().unwrap_or(0)),
            matched: if p.is_leader() {
                let mut m: Vec<(u64, u64)> = p.raw.raft.prs().iter().map(|(id, pr)| (*id, pr.matched)).collect();
                m.sort_unstable();
                m
            } else {
                Vec::new()
            },
        })
    }

    /// The state of every replica on this node, by shard id.
    pub fn statuses(&self) -> Vec<ShardStatus> {
        self.peers.keys().filter_map(|id| self.status(*id)).collect()
    }

    /// Ids of the shards with a replica here.
    pub fn shard_ids(&self) -> Vec<u64> {
        self.peers.keys().copied().collect()
    }
}

/// Messages a sleeping replica takes without waking: the trailing acknowledgements of the
/// heartbeats it sent before going to sleep.
fn is_trailing(msg: &Message, term: u64) -> bool {
    msg.term == term
        && match msg.get_msg_type() {
            MessageType::MsgHeartbeatResponse => true,
            MessageType::MsgAppendResponse => !msg.reject,
            _ => false,
        }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use presage_engine::{range_checksum, MemEngine, Reader};

    use super::*;
    use crate::peer::ReadResponse;
    use crate::wire::Replica;

    /// Shard 1 over the whole key space at epoch 1/1, with voters on `nodes`.
    fn whole_keyspace(nodes: &[u64]) -> (ShardDescriptor, Epoch) {
        let epoch = Epoch { version: 1, conf_ver: 1 };
        let desc = ShardDescriptor {
            id: 1,
            start: Vec::new(),
            end: None,
            epoch: Some(epoch),
            replicas: nodes.iter().map(|n| Replica::voter(*n)).collect(),
            merging_into: None,
        };
        (desc, epoch)
    }

    /// A single-voter store, leading shard 1 over the whole key space.
    fn leading_store() -> (Store<MemEngine>, Epoch) {
        let (desc, epoch) = whole_keyspace(&[1]);
        let mut store = Store::open(1, MemEngine::new(), RaftConfig::default()).expect("open");
        store.bootstrap_shard(desc).expect("bootstrap");
        store.campaign(1).expect("campaign");
        for _ in 0..3 {
            store.process_ready().expect("ready");
        }
        assert!(store.status(1).expect("replica").is_leader());
        (store, epoch)
    }

    pub(super) fn put(key: &str) -> Vec<Op> {
        vec![Op::put(key.as_bytes().to_vec(), b"v".to_vec())]
    }

    fn pairs_pinned(store: &Store<MemEngine>, index: u64) -> u64 {
        let pin = store.checksum_pin(1, index).expect("pinned");
        assert_eq!(pin.index, index);
        range_checksum(&*pin.reader, Cf::Data, &pin.range).expect("checksum").pairs
    }

    /// Writes before, the checksum, a write after, all committed in one ready round: apply
    /// stops right after the `ComputeChecksum`, the pin holds exactly the write before it, the
    /// write after applies in the next round (the pin does not see it), and a newer round
    /// replaces the pin.
    #[test]
    fn compute_checksum_pins_the_data_as_of_its_entry() {
        let (mut store, epoch) = leading_store();
        let index = Arc::new(Mutex::new(None));
        let record = |slot: &Arc<Mutex<Option<u64>>>| {
            let slot = Arc::clone(slot);
            Box::new(move |r: Result<u64>| *slot.lock().expect("lock") = Some(r.expect("checksum applied")))
        };
        store.propose(1, epoch, put("a"), None, Box::new(|r| r.expect("write a")));
        store.propose_checksum(1, epoch, record(&index));
        store.propose(1, epoch, put("b"), None, Box::new(|r| r.expect("write b")));
        // A round appends (the log write completes at once here), the next commits and applies.
        store.process_ready().expect("ready");
        store.process_ready().expect("ready");
        let at = index.lock().expect("lock").expect("the checksum applied this round");
        let s = store.status(1).expect("replica");
        assert_eq!(s.applied, at, "apply stopped right after the ComputeChecksum: {s:?}");
        assert!(s.commit > at, "the write after it is committed, not applied: {s:?}");
        assert_eq!(pairs_pinned(&store, at), 1, "only the write before");
        assert!(matches!(
            store.checksum_pin(1, at + 1),
            Err(Error::ChecksumNotReady { shard_id: 1, index, applied }) if index == at + 1 && applied == at
        ));

        store.process_ready().expect("ready");
        let s = store.status(1).expect("replica");
        assert_eq!(s.applied, s.commit, "the rest applied in the next round: {s:?}");
        assert!(store.engine.get(Cf::Data, b"b").expect("read").is_some());
        assert_eq!(pairs_pinned(&store, at), 1, "the pin does not see later writes");

        let newer = Arc::new(Mutex::new(None));
        store.propose_checksum(1, epoch, record(&newer));
        store.process_ready().expect("ready");
        store.process_ready().expect("ready");
        let at2 = newer.lock().expect("lock").expect("the second checksum applied");
        assert!(at2 > at);
        assert_eq!(pairs_pinned(&store, at2), 2);
        assert!(matches!(store.checksum_pin(1, at), Err(Error::ChecksumMissed { shard_id: 1, index }) if index == at));
        assert!(matches!(store.checksum_pin(2, at), Err(Error::ShardNotFound { shard_id: 2 })));

        // Refused at propose: a stale epoch.
        let refused = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&refused);
        let stale = Epoch { version: 0, ..epoch };
        store.propose_checksum(1, stale, Box::new(move |r| *slot.lock().expect("lock") = Some(r)));
        assert!(matches!(refused.lock().expect("lock").take(), Some(Err(Error::EpochNotMatch { .. }))));

        // The pin expires.
        store.set_now(Instant::now() + Duration::from_secs(CHECKSUM_PIN_MAX_AGE_SECS + 1));
        store.tick();
        assert!(matches!(store.checksum_pin(1, at2), Err(Error::ChecksumMissed { .. })));
    }

    /// [`three_stores`] with lease reads on, every store's clock at one `now`.
    pub(super) fn three_leasing_stores() -> (Vec<Store<MemEngine>>, Epoch, Instant) {
        let (mut stores, epoch) = three_stores(true);
        let now = Instant::now();
        for s in stores.iter_mut() {
            s.set_now(now);
        }
        (stores, epoch, now)
    }

    /// Three stores on nodes 1-3 with shard 1 on all of them, node 1 leading; messages are
    /// carried by hand ([`deliver`]).
    pub(super) fn three_stores(lease_reads: bool) -> (Vec<Store<MemEngine>>, Epoch) {
        let (desc, epoch) = whole_keyspace(&[1, 2, 3]);
        let config = RaftConfig { lease_reads, ..RaftConfig::default() };
        let mut stores: Vec<Store<MemEngine>> = (1..=3)
            .map(|n| {
                let mut s = Store::open(n, MemEngine::new(), config.clone()).expect("open");
                s.bootstrap_shard(desc.clone()).expect("bootstrap");
                s
            })
            .collect();
        stores[0].campaign(1).expect("campaign");
        deliver(&mut stores, Vec::new());
        assert!(stores[0].status(1).expect("replica").is_leader());
        (stores, epoch)
    }

    /// Runs ready rounds on every store and carries `first` and every message they send until
    /// none is left (two quiet rounds: messages an apply produced go out the round after).
    pub(super) fn deliver(stores: &mut [Store<MemEngine>], first: Vec<RaftEnvelope>) {
        let mut queue = first;
        let mut quiet_rounds = 0;
        for _ in 0..100 {
            for s in stores.iter_mut() {
                queue.extend(s.process_ready().expect("ready"));
            }
            quiet_rounds = if queue.is_empty() { quiet_rounds + 1 } else { 0 };
            if quiet_rounds == 2 {
                return;
            }
            for env in std::mem::take(&mut queue) {
                let to = usize::try_from(env.to_node).expect("node id") - 1;
                stores[to].step(env).expect("step");
            }
        }
        panic!("messages still flowing after 100 rounds");
    }

    type Answers = Arc<Mutex<Vec<Result<crate::peer::ReadResponse>>>>;

    fn read_into(answers: &Answers) -> ReadCallback {
        let answers = Arc::clone(answers);
        Box::new(move |r| answers.lock().expect("lock").push(r))
    }

    pub(super) fn get_a() -> ReadRequest {
        ReadRequest::Get(b"a".to_vec())
    }

    /// Reads waiting on a leader together go out as one ReadIndex round: one heartbeat to
    /// each follower, not one per read; all are answered when it comes back.
    #[test]
    fn waiting_reads_share_one_readindex_round() {
        let (mut stores, epoch) = three_stores(false);
        let answers: Answers = Arc::default();
        for _ in 0..10 {
            stores[0].read(1, epoch, get_a(), false, read_into(&answers));
        }
        let out = stores[0].process_ready().expect("ready");
        let heartbeats: Vec<_> = out
            .iter()
            .filter(|e| e.message.as_ref().is_some_and(|m| m.get_msg_type() == MessageType::MsgHeartbeat))
            .collect();
        assert_eq!(heartbeats.len(), 2, "one heartbeat per follower for the ten reads");
        deliver(&mut stores, out);
        let answers = answers.lock().expect("lock");
        assert_eq!(answers.len(), 10);
        assert!(answers.iter().all(|a| matches!(a, Ok(crate::peer::ReadResponse::Value(None)))), "{answers:?}");
    }

    /// Under a lease a read is answered at once, inside the call; a leadership transfer
    /// ends the lease, so the next read waits for a ReadIndex round.
    #[test]
    fn a_leased_read_is_answered_at_once_until_a_transfer_starts() {
        let (mut stores, epoch, _) = three_leasing_stores();
        let answers: Answers = Arc::default();
        // The first read confirms leadership with a round, which starts the lease.
        stores[0].read(1, epoch, get_a(), false, read_into(&answers));
        assert!(answers.lock().expect("lock").is_empty(), "no lease yet");
        deliver(&mut stores, Vec::new());
        assert_eq!(answers.lock().expect("lock").len(), 1);

        stores[0].read(1, epoch, get_a(), false, read_into(&answers));
        assert_eq!(answers.lock().expect("lock").len(), 2, "answered inside the call, under the lease");

        stores[0].transfer_leader(1, 2).expect("transfer starts");
        stores[0].read(1, epoch, get_a(), false, read_into(&answers));
        assert_eq!(answers.lock().expect("lock").len(), 2, "no lease once a transfer started");
    }

    /// A leader publishes its lease once a ReadIndex round started it: reads are then
    /// answered off the loop, see acknowledged writes, and stop when a transfer starts, when
    /// the lease lapses and for a stale epoch; followers publish nothing.
    #[test]
    fn leased_reads_are_served_off_the_loop_until_the_lease_ends() {
        let (mut stores, epoch, now) = three_leasing_stores();
        let local = stores[0].local_reader();
        let at = |t: Instant| move || t;
        assert!(local.try_read(1, epoch, &get_a(), at(now)).is_none(), "no lease before a ReadIndex round");
        let answers: Answers = Arc::default();
        stores[0].read(1, epoch, get_a(), false, read_into(&answers));
        deliver(&mut stores, Vec::new());
        assert_eq!(local.views().published(), 1);
        assert!(matches!(local.try_read(1, epoch, &get_a(), at(now)), Some(Ok(ReadResponse::Value(None)))));

        let acked = Arc::new(Mutex::new(false));
        let flag = Arc::clone(&acked);
        stores[0].propose(1, epoch, put("a"), None, Box::new(move |r| *flag.lock().expect("lock") = r.is_ok()));
        deliver(&mut stores, Vec::new());
        assert!(*acked.lock().expect("lock"), "the write was acknowledged");
        let seen = local.try_read(1, epoch, &get_a(), at(now));
        assert!(matches!(seen, Some(Ok(ReadResponse::Value(Some(ref v)))) if v == b"v"), "{seen:?}");
        let many = |max_bytes| ReadRequest::GetMany { keys: vec![b"a".to_vec(), b"zz".to_vec()], max_bytes };
        let both = local.try_read(1, epoch, &many(100), at(now));
        assert!(matches!(both, Some(Ok(ReadResponse::Values(ref v))) if *v == [Some(b"v".to_vec()), None]), "{both:?}");
        let first = local.try_read(1, epoch, &many(0), at(now));
        assert!(
            matches!(first, Some(Ok(ReadResponse::Values(ref v))) if *v == [Some(b"v".to_vec())]),
            "an answer over its size limit still holds the first value: {first:?}"
        );

        let stale = Epoch { version: epoch.version + 1, ..epoch };
        assert!(local.try_read(1, stale, &get_a(), at(now)).is_none(), "a stale epoch goes the loop's way");
        let lease = RaftConfig::default().lease().expect("lease reads");
        assert!(local.try_read(1, epoch, &get_a(), at(now + lease)).is_none(), "not once the lease lapsed");
        for follower in &stores[1..] {
            assert_eq!(follower.lease_views().published(), 0, "followers hold no lease");
            // A read sent to a follower is redirected without the loop, to the leader it knows.
            let redirect = follower.local_reader().try_read(1, epoch, &get_a(), at(now));
            assert!(
                matches!(redirect, Some(Err(crate::Error::NotLeader { shard_id: 1, leader: Some(1) }))),
                "{redirect:?}"
            );
        }
        stores[0].transfer_leader(1, 2).expect("transfer starts");
        assert!(local.try_read(1, epoch, &get_a(), at(now)).is_none(), "no lease once a transfer started");
        assert_eq!(local.served(), 4);
    }

    /// A swap whose demoted voter took the leadership while the change was joint leaves
    /// raft-rs with a learner leading once the joint state is left; the learner hands the
    /// leadership to a voter (the shard manager takes reports from voters only).
    #[test]
    fn a_leader_demoted_to_learner_hands_its_leadership_to_a_voter() {
        let (mut desc, _) = whole_keyspace(&[1, 2, 3]);
        desc.replicas.push(Replica::learner(4));
        let mut stores: Vec<Store<MemEngine>> = (1..=4)
            .map(|n| {
                let mut s = Store::open(n, MemEngine::new(), RaftConfig::default()).expect("open");
                s.bootstrap_shard(desc.clone()).expect("bootstrap");
                s
            })
            .collect();
        stores[0].campaign(1).expect("campaign");
        deliver(&mut stores, Vec::new());
        stores[0].swap_replicas(1, 4, 2, Box::new(|_| {}));
        // One ready round at a time until node 1 applied the joint configuration (four voters).
        let voters = |s: &Store<MemEngine>| {
            s.status(1).expect("replica").descriptor.replicas.iter().filter(|r| r.is_voter()).count()
        };
        let mut queue = Vec::new();
        for _ in 0..20 {
            for s in stores.iter_mut() {
                queue.extend(s.process_ready().expect("ready"));
            }
            if voters(&stores[0]) == 4 {
                break;
            }
            for env in std::mem::take(&mut queue) {
                let to = usize::try_from(env.to_node).expect("node id") - 1;
                stores[to].step(env).expect("step");
            }
        }
        assert_eq!(voters(&stores[0]), 4, "the joint configuration applied on the leader");
        stores[0].transfer_leader(1, 2).expect("the voter being demoted may still take the leadership");
        deliver(&mut stores, queue);
        // The first hand-off can reach a voter that has not applied the leave yet (raft-rs
        // then does not campaign); the transfer lapses after an election timeout and is
        // retried on a tick.
        let leaders = |stores: &[Store<MemEngine>]| -> Vec<u64> {
            (1..=4u64).filter(|n| stores[*n as usize - 1].status(1).is_some_and(|s| s.is_leader())).collect()
        };
        for _ in 0..10 * RaftConfig::default().election_ticks {
            if leaders(&stores) != [2] {
                break;
            }
            for s in stores.iter_mut() {
                s.tick();
            }
            deliver(&mut stores, Vec::new());
        }
        let learner = |n: usize| {
            stores[n - 1]
                .status(1)
                .expect("replica")
                .descriptor
                .replicas
                .iter()
                .any(|r| r.node_id == 2 && !r.is_voter())
        };
        assert!((1..=4).all(learner), "node 2 demoted everywhere");
        let leaders = leaders(&stores);
        assert_eq!(leaders.len(), 1, "one leader: {leaders:?}");
        assert!([1, 3, 4].contains(&leaders[0]), "a voter leads, not the demoted node 2: {leaders:?}");
    }

    /// A follower of shard 1 (voters 1 and 2) on node 2.
    fn following_store() -> Store<MemEngine> {
        let (desc, _) = whole_keyspace(&[1, 2]);
        let mut store = Store::open(2, MemEngine::new(), RaftConfig::default()).expect("open");
        store.bootstrap_shard(desc).expect("bootstrap");
        store.process_ready().expect("ready");
        store
    }

    fn heartbeat(from: u64, msg_from: u64, commit: u64) -> RaftEnvelope {
        let mut msg = Message { from: msg_from, to: 2, term: 5, commit, ..Message::default() };
        msg.set_msg_type(MessageType::MsgHeartbeat);
        RaftEnvelope { shard_id: 1, from_node: from, to_node: 2, message: Some(msg), ..RaftEnvelope::default() }
    }

    /// raft-rs panics on a heartbeat whose commit is beyond the follower's log; such a
    /// message (a buggy or hostile peer) is dropped and the node goes on. A message whose
    /// replicas are not the envelope's nodes is dropped too.
    #[test]
    fn impossible_raft_messages_are_dropped_not_fatal() {
        let mut store = following_store();
        let before = store.status(1).expect("replica");
        store.step(heartbeat(1, 1, 1_000_000)).expect("step");
        store.step(heartbeat(1, 3, 0)).expect("step");
        store.process_ready().expect("ready");
        let after = store.status(1).expect("replica");
        assert_eq!((after.commit, after.term), (before.commit, before.term), "nothing taken from them");
        // A well-formed heartbeat is taken.
        store.step(heartbeat(1, 1, before.commit)).expect("step");
        store.process_ready().expect("ready");
        assert_eq!(store.status(1).expect("replica").term, 5);
    }

    /// A tombstone destroys a replica only from a member of the newer configuration it names.
    #[test]
    fn tombstones_count_only_from_members_of_the_newer_configuration() {
        let mut store = following_store();
        let newer = |members: Vec<Replica>| ShardDescriptor {
            id: 1,
            start: Vec::new(),
            end: None,
            epoch: Some(Epoch { version: 1, conf_ver: 5 }),
            replicas: members,
            merging_into: None,
        };
        let tombstone = |from: u64, d: ShardDescriptor| RaftEnvelope {
            shard_id: 1,
            from_node: from,
            to_node: 2,
            descriptor: Some(d),
            tombstone: true,
            ..RaftEnvelope::default()
        };
        store.step(tombstone(9, newer(vec![Replica::voter(1), Replica::voter(3)]))).expect("step");
        store.step(tombstone(9, newer(vec![Replica::voter(9)]))).expect("step");
        store.process_ready().expect("ready");
        assert!(store.status(1).is_some(), "node 9 is in neither this replica's group nor was it asked");
        // The manager's report alone destroys nothing: it makes the node ask the members.
        assert!(store.probe_stale(&newer(vec![Replica::voter(1), Replica::voter(3)])));
        let asked: Vec<u64> = store.pending_out.iter().map(|e| e.to_node).collect();
        assert_eq!(asked, [1, 3]);
        assert!(store.status(1).is_some());
        store.step(tombstone(3, newer(vec![Replica::voter(1), Replica::voter(3)]))).expect("step");
        store.process_ready().expect("ready");
        assert!(store.status(1).is_none(), "a member's word destroys it");
    }

    /// A stored descriptor that does not decode stops the store from opening (starting
    /// without that replica would silently drop a copy the cluster counts on).
    #[test]
    fn an_undecodable_descriptor_refuses_to_open() {
        let engine = MemEngine::new();
        let mut store = Store::open(2, engine.clone(), RaftConfig::default()).expect("open");
        store.bootstrap_shard(following_store().status(1).expect("replica").descriptor).expect("bootstrap");
        drop(store);
        Store::open(2, engine.clone(), RaftConfig::default()).expect("a good store opens");
        let mut wb = WriteBatch::new();
        wb.put(Cf::Meta, keys::descriptor_key(1), vec![0xff, 0xff, 0xff]);
        engine.write(&wb, WriteOptions::SYNC).expect("damage");
        assert!(Store::open(2, engine, RaftConfig::default()).is_err(), "a damaged descriptor is an error");
    }
}
