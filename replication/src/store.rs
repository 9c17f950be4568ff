//! `Store`: every replica on a node, driven together.
//!
//! The store is a synchronous state machine with no I/O besides its engine: the node runtime
//! (`node.rs`) feeds it ticks, messages and requests and sends what it returns. One call to
//! [`Store::process_ready`] handles the ready state of every replica:
//!
//! 1. messages a leader may send before persisting go out at once;
//! 2. every replica's new log entries, hard state and already-persisted committed entries go
//!    into **one** engine batch, written with one sync (group commit);
//! 3. then the messages that had to wait for persistence, and the entries committed by
//!    `advance`, applied in a second (unsynced) batch - the apply state travels with the data
//!    it describes, so a crash replays exactly the unapplied suffix;
//! 4. callbacks of applied proposals and served reads run last, after their batch is written.
//!
//! `Store`, every replica of a node. `process_ready` = one engine batch with one sync for all
//! replicas' log appends, hard states and already-persisted committed entries, then a second
//! unsynced batch for entries committed by `advance`; callbacks run after their batch. Right after
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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use presage_engine::{for_each_pair, Cf, Engine, KeyRange, Reader, WriteBatch, WriteOptions};
use raft::eraftpb::{ConfChangeV2, Message, MessageType};
use raft::{SnapshotStatus, StateRole};

use crate::config::RaftConfig;
use crate::error::{Error, Result};
use crate::keys;
use crate::peer::{
    AdminEntry, ChecksumPin, Completions, IndexCallback, Peer, ReadCallback, ReadRequest, WriteCallback,
};
use crate::snapshot::{self, AckOutcome, OutgoingSnapshot};
use crate::storage::PeerStorage;
use crate::wire::{self, Epoch, Op, RaftEnvelope, ShardDescriptor, SnapshotData};

/// Ticks between two pages of each leader's expiry sweep (see [`Peer::sweep_expired`]).
const SWEEP_EVERY_TICKS: u64 = 10;
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Envelopes produced outside a ready round (acknowledgements, resends).
    pending_out: Vec<RaftEnvelope>,
    /// Replicas that are awake: ticked and visited by every ready round.
    active: BTreeSet<u64>,
    /// Sleeping replicas that received a message this round (visited by the next ready round
    /// only).
    touched: BTreeSet<u64>,
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
}

impl<E: Engine> Store<E> {
    /// Opens the store of `node_id`, recovering every replica persisted in `engine`.
    pub fn open(node_id: u64, engine: E, config: RaftConfig) -> Result<Self> {
        config.validate()?;
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
        for shard_id in shard_ids {
            if let Some(storage) = PeerStorage::load(engine.clone(), shard_id)? {
                peers.insert(shard_id, Peer::new(node_id, storage, &config)?);
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
            pending_out: Vec::new(),
            active,
            touched: BTreeSet::new(),
            ticks: 0,
            now: Instant::now(),
            last_heard: BTreeMap::new(),
            silent: BTreeSet::new(),
            ping_targets: None,
            frozen,
            pinned: BTreeSet::new(),
            probed: BTreeMap::new(),
        })
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
            self.peers.insert(shard_id, Peer::new(self.node_id, storage, &self.config)?);
            self.active.insert(shard_id);
        }
        Ok(())
    }

    /// Wakes a sleeping replica.
    fn wake(&mut self, shard_id: u64) {
        if let Some(peer) = self.peers.get_mut(&shard_id) {
            if peer.quiescent {
                self.ping_targets = None;
            }
            peer.wake();
            self.active.insert(shard_id);
        }
    }

    /// Wakes a sleeping replica for a client request, if it leads (a follower answers
    /// `NotLeader` asleep; waking it would only make it campaign).
    fn wake_leader(&mut self, shard_id: u64) {
        if self.peers.get(&shard_id).is_some_and(|p| p.is_leader()) {
            self.wake(shard_id);
        }
    }

    /// Puts a replica to sleep.
    fn quiesce(&mut self, shard_id: u64) {
        if let Some(peer) = self.peers.get_mut(&shard_id) {
            peer.quiescent = true;
            self.active.remove(&shard_id);
            self.ping_targets = None;
        }
    }

    /// Counts over every replica.
    pub fn summary(&self) -> StoreSummary {
        StoreSummary {
            replicas: self.peers.len(),
            leaders: self.peers.values().filter(|p| p.is_leader()).count(),
            quiescent: self.peers.len() - self.active.len(),
            snapshot_rate_bytes_per_sec: self.snapshot_rate_bytes_per_sec,
            snapshot_bytes_sent: self.snapshot_bytes_sent,
            snapshots_outgoing: self.outgoing.len(),
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

    /// Advances the logical clock of every awake replica by one tick; puts idle groups to
    /// sleep and pings the nodes that share sleeping groups.
    pub fn tick(&mut self) {
        self.ticks += 1;
        let max_read_age_ticks = 2 * self.config.election_ticks;
        let quiesce_after = self.config.quiesce_after_ticks;
        let mut sleepers = Vec::new();
        for shard_id in &self.active {
            let Some(peer) = self.peers.get_mut(shard_id) else { continue };
            peer.raw.tick();
            peer.expire_reads(max_read_age_ticks);
            peer.idle_ticks += 1;
            if quiesce_after > 0
                && peer.idle_ticks >= quiesce_after
                && !peer.raw.has_ready() // e.g. a heartbeat this tick queued: not a quiesce one
                && peer.can_quiesce()
                && !self.outgoing.iter().any(|o| o.shard_id == *shard_id)
            {
                sleepers.push(*shard_id);
            }
        }
        for shard_id in sleepers {
            self.quiesce_leader(shard_id);
        }
        if self.ticks.is_multiple_of(SWEEP_EVERY_TICKS) {
            for shard_id in &self.active {
                let Some(peer) = self.peers.get_mut(shard_id) else { continue };
                if let Err(e) = peer.sweep_expired(SWEEP_PAGE_KEYS) {
                    tracing::warn!(node = self.node_id, shard = shard_id, error = %e, "expiry sweep failed");
                }
            }
        }
        self.expire_checksum_pins();
        self.check_liveness();
        let per_tick =
            i64::try_from(self.config.snapshot_bytes_per_tick(self.snapshot_rate_bytes_per_sec)).unwrap_or(i64::MAX);
        let cap = per_tick.saturating_add(i64::try_from(self.config.snapshot_chunk_bytes).unwrap_or(0));
        self.snapshot_budget_bytes = self.snapshot_budget_bytes.saturating_add(per_tick).min(cap);
        let node_id = self.node_id;
        let mut failed = Vec::new();
        for (i, o) in self.outgoing.iter_mut().enumerate() {
            if !o.on_tick(node_id, &self.config, &mut self.pending_out) {
                failed.push(i);
            }
        }
        for i in failed.into_iter().rev() {
            let o = self.outgoing.remove(i);
            tracing::warn!(node = node_id, shard = o.shard_id, to = o.to, "snapshot transfer timed out");
            self.report_snapshot(o.shard_id, o.to, SnapshotStatus::Failure);
        }
    }

    /// Drops checksum pins older than [`CHECKSUM_PIN_MAX_AGE_SECS`].
    fn expire_checksum_pins(&mut self) {
        let max_age = Duration::from_secs(CHECKSUM_PIN_MAX_AGE_SECS);
        let now = self.now;
        let peers = &mut self.peers;
        self.pinned.retain(|shard_id| {
            let Some(peer) = peers.get_mut(shard_id) else { return false };
            match &peer.checksum_pin {
                Some(pin) if now.saturating_duration_since(pin.taken_at) >= max_age => {
                    peer.checksum_pin = None;
                    false
                }
                Some(_) => true,
                None => false,
            }
        });
    }

    /// Pins the engine for every visited replica that applied a `ComputeChecksum` into the
    /// batch just written: apply stopped right after that entry, so the engine now holds the
    /// shard's data exactly as of its index. One engine snapshot serves them all.
    fn pin_checksums(&mut self, visit: &[u64], written: bool) {
        let mut snapshot: Option<Arc<E::Snapshot>> = None;
        for shard_id in visit {
            let Some(peer) = self.peers.get_mut(shard_id) else { continue };
            let Some((index, range)) = peer.checksum_pending.take() else { continue };
            debug_assert!(written, "shard {shard_id}: a ComputeChecksum applied into a batch that was not written");
            debug_assert_eq!(
                peer.raw.store().applied_index(),
                index,
                "shard {shard_id}: nothing applies after a ComputeChecksum before its data is pinned"
            );
            let snapshot = Arc::clone(snapshot.get_or_insert_with(|| Arc::new(self.engine.snapshot())));
            peer.checksum_pin = Some(ChecksumPin { index, range, snapshot, taken_at: self.now });
            self.pinned.insert(*shard_id);
        }
    }

    /// Sends the followers of `shard_id` a last heartbeat marked `quiesce` and puts the
    /// leader to sleep.
    fn quiesce_leader(&mut self, shard_id: u64) {
        let Some(peer) = self.peers.get(&shard_id) else { return };
        let r = &peer.raw.raft;
        let desc = peer.descriptor().clone();
        for (&to, pr) in r.prs().iter().filter(|(id, _)| **id != self.node_id) {
            let mut hb = Message::default();
            hb.set_msg_type(MessageType::MsgHeartbeat);
            hb.from = self.node_id;
            hb.to = to;
            hb.term = r.term;
            hb.commit = r.raft_log.committed.min(pr.matched); // as raft-rs's own heartbeats
            self.pending_out.push(RaftEnvelope {
                shard_id,
                from_node: self.node_id,
                to_node: to,
                descriptor: Some(desc.clone()),
                message: Some(hb),
                quiesce: true,
                ..RaftEnvelope::default()
            });
        }
        self.quiesce(shard_id);
    }

    /// Pings the nodes that share sleeping groups, and wakes the sleeping groups of nodes
    /// silent for longer than an election timeout.
    fn check_liveness(&mut self) {
        if self.active.len() == self.peers.len() {
            return;
        }
        if self.ticks.is_multiple_of(self.config.heartbeat_ticks as u64) {
            let node_id = self.node_id;
            let targets = self.ping_targets.get_or_insert_with(|| {
                let mut t = BTreeSet::new();
                for p in self.peers.values().filter(|p| p.quiescent) {
                    t.extend(p.descriptor().replicas.iter().map(|r| r.node_id).filter(|n| *n != node_id));
                }
                t.into_iter().collect()
            });
            for &to in targets.iter() {
                self.pending_out.push(RaftEnvelope {
                    from_node: node_id,
                    to_node: to,
                    ping: true,
                    ..RaftEnvelope::default()
                });
            }
        }
        let timeout = self.config.election_ticks as u64;
        let newly_silent: Vec<u64> = self
            .last_heard
            .iter()
            .filter(|(n, at)| self.ticks.saturating_sub(**at) > timeout && !self.silent.contains(*n))
            .map(|(n, _)| *n)
            .collect();
        for n in newly_silent {
            self.silent.insert(n);
            let sleeping: Vec<u64> = self
                .peers
                .iter()
                .filter(|(_, p)| p.quiescent && p.descriptor().replicas.iter().any(|r| r.node_id == n))
                .map(|(id, _)| *id)
                .collect();
            if !sleeping.is_empty() {
                tracing::info!(
                    node = self.node_id,
                    silent = n,
                    groups = sleeping.len(),
                    "node silent: waking its sleeping groups"
                );
            }
            for shard_id in sleeping {
                self.wake(shard_id);
            }
        }
    }

    fn report_snapshot(&mut self, shard_id: u64, to: u64, status: SnapshotStatus) {
        if let Some(peer) = self.peers.get_mut(&shard_id) {
            peer.raw.report_snapshot(to, status);
        }
    }

    fn on_snapshot_ack(&mut self, env: &RaftEnvelope, ack: &wire::SnapshotAck) {
        let Some(i) = self.outgoing.iter().position(|o| o.shard_id == env.shard_id && o.to == env.from_node) else {
            return;
        };
        match self.outgoing[i].on_ack(ack) {
            AckOutcome::Continue => {}
            AckOutcome::Complete => {
                let o = self.outgoing.remove(i);
                tracing::info!(
                    node = self.node_id,
                    shard = o.shard_id,
                    to = o.to,
                    index = o.index,
                    bytes = o.bytes_sent,
                    "snapshot data delivered"
                );
                let desc = self.peers.get(&o.shard_id).map(|p| p.descriptor().clone());
                self.pending_out.push(RaftEnvelope {
                    shard_id: o.shard_id,
                    from_node: self.node_id,
                    to_node: o.to,
                    descriptor: desc,
                    message: Some(o.msg),
                    ..RaftEnvelope::default()
                });
                self.report_snapshot(o.shard_id, o.to, SnapshotStatus::Finish);
            }
            AckOutcome::Failed(why) => {
                let o = self.outgoing.remove(i);
                tracing::warn!(node = self.node_id, shard = o.shard_id, to = o.to, reason = %why, "snapshot transfer failed");
                self.report_snapshot(o.shard_id, o.to, SnapshotStatus::Failure);
            }
        }
    }

    /// Hands a Raft message to its replica, creating the replica if this node was just
    /// added to the shard.
    pub fn step(&mut self, mut env: RaftEnvelope) -> Result<()> {
        if env.to_node != self.node_id {
            tracing::warn!(node = self.node_id, to = env.to_node, "dropping a message addressed to another node");
            return Ok(());
        }
        self.last_heard.insert(env.from_node, self.ticks);
        self.silent.remove(&env.from_node);
        if env.ping {
            return Ok(());
        }
        if let Some(ack) = env.snapshot_ack.take() {
            self.on_snapshot_ack(&env, &ack);
        }
        if let Some(chunk) = env.snapshot_chunk.take() {
            let initialized_past = self
                .peers
                .get(&env.shard_id)
                .is_some_and(|p| p.raw.store().is_initialized() && p.raw.store().applied_index() >= chunk.index);
            if !initialized_past {
                let ack = snapshot::receive_chunk(&self.engine, self.node_id, &env, &chunk)?;
                self.pending_out.push(ack);
            }
        }
        if let Some(peer) = self.peers.get_mut(&env.shard_id) {
            let mine = peer.descriptor().clone();
            let theirs = env.descriptor.as_ref().map_or(0, |d| d.epoch().conf_ver);
            if env.tombstone {
                // A newer configuration without us: this replica is gone. It counts only from
                // a member of that configuration who is also a member of ours, or whom this
                // node asked (`probe_stale`): a node outside the group cannot destroy it.
                let from = env.from_node;
                let known = mine.replicas.iter().any(|r| r.node_id == from)
                    || self.probed.get(&env.shard_id).is_some_and(|p| p.contains(&from));
                match &env.descriptor {
                    Some(d) if known && d.replicas.iter().any(|r| r.node_id == from) => {
                        if self.tombstone(d) {
                            self.probed.remove(&env.shard_id);
                        }
                    }
                    _ => tracing::warn!(
                        node = self.node_id,
                        shard = env.shard_id,
                        from,
                        "a tombstone from a node neither in this replica's group nor asked; ignored"
                    ),
                }
                return Ok(());
            }
            if !mine.replicas.iter().any(|r| r.node_id == env.from_node) && theirs < mine.epoch().conf_ver {
                // The sender was removed in a configuration it never learned of: tell it.
                self.pending_out.push(RaftEnvelope {
                    shard_id: env.shard_id,
                    from_node: self.node_id,
                    to_node: env.from_node,
                    descriptor: Some(mine),
                    tombstone: true,
                    ..RaftEnvelope::default()
                });
                return Ok(());
            }
        }
        let Some(msg) = env.message else { return Ok(()) };
        if msg.from != env.from_node || msg.to != self.node_id {
            tracing::warn!(
                node = self.node_id,
                shard = env.shard_id,
                from = env.from_node,
                msg_from = msg.from,
                msg_to = msg.to,
                "a Raft message whose replicas are not the envelope's nodes; dropped"
            );
            return Ok(());
        }
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            // Raft may take the snapshot only once its data is staged and verified here.
            let index = msg.snapshot.as_ref().and_then(|s| s.metadata.as_ref()).map_or(0, |m| m.index);
            let staged = env
                .descriptor
                .as_ref()
                .and_then(|d| d.range().ok())
                .is_some_and(|r| snapshot::is_staged(&self.engine, env.shard_id, &r, index));
            if !staged {
                tracing::debug!(
                    node = self.node_id,
                    shard = env.shard_id,
                    index,
                    "snapshot message before its data; dropped"
                );
                return Ok(());
            }
            // A snapshot may not cover a range another initialized replica here still serves
            // (it would keep writing older data into it). A source frozen into this shard is
            // the exception: installing the snapshot finishes that merge here.
            if let Some(d) = &env.descriptor {
                let blocked = self.peers.iter().find(|(id, p)| {
                    **id != env.shard_id
                        && p.raw.store().is_initialized()
                        && p.descriptor().overlaps(d)
                        && p.descriptor().merging_into != Some(env.shard_id)
                });
                if let Some((other, _)) = blocked {
                    tracing::debug!(
                        node = self.node_id,
                        shard = env.shard_id,
                        other,
                        "snapshot overlaps a live replica; dropped"
                    );
                    return Ok(());
                }
            }
        }
        if !self.peers.contains_key(&env.shard_id) {
            let Some(desc) = self.replica_to_create(env.shard_id, &msg, env.descriptor) else { return Ok(()) };
            let storage = PeerStorage::uninitialized(self.engine.clone(), desc);
            self.peers.insert(env.shard_id, Peer::new(self.node_id, storage, &self.config)?);
            self.active.insert(env.shard_id);
        }
        let shard_id = env.shard_id;
        let Some(peer) = self.peers.get(&shard_id) else { return Ok(()) };
        if peer.quiescent && !is_trailing(&msg, peer.raw.raft.term) {
            self.wake(shard_id);
        } else if peer.quiescent {
            self.touched.insert(shard_id);
        }
        let (from, term, commit) = (msg.from, msg.term, msg.commit);
        let Some(peer) = self.peers.get_mut(&shard_id) else { return Ok(()) };
        if let Err(why) = impossible(&peer.raw.raft.raft_log, &msg) {
            tracing::warn!(node = self.node_id, shard = shard_id, from, why, "an impossible Raft message; dropped");
            return Ok(());
        }
        match peer.raw.step(msg) {
            Ok(()) | Err(raft::Error::StepPeerNotFound) | Err(raft::Error::StepLocalMsg) => {}
            Err(e) => {
                tracing::debug!(node = self.node_id, shard = shard_id, error = %e, "raft refused a message");
            }
        }
        if env.quiesce && !peer.quiescent && peer.can_quiesce_as_follower(from, term, commit) {
            // Visit it once more so that what the heartbeat committed gets applied.
            self.touched.insert(shard_id);
            self.quiesce(shard_id);
        }
        Ok(())
    }

    /// A message from a leader for a shard this node does not have yet creates an empty
    /// replica, if the sender lists this node among the shard's replicas.
    fn replica_to_create(
        &self,
        shard_id: u64,
        msg: &Message,
        desc: Option<ShardDescriptor>,
    ) -> Option<ShardDescriptor> {
        let creating =
            matches!(msg.get_msg_type(), MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot);
        let desc = desc?;
        // A replica removed at conf_ver v comes back only through a newer configuration.
        if let Ok(Some(raw)) = self.engine.get(Cf::Meta, &keys::tombstone_key(shard_id)) {
            let removed_at = <[u8; 8]>::try_from(raw.as_slice()).map(u64::from_be_bytes).unwrap_or(u64::MAX);
            if desc.epoch().conf_ver <= removed_at {
                return None;
            }
        }
        if !(creating && desc.id == shard_id && desc.replicas.iter().any(|r| r.node_id == self.node_id)) {
            return None;
        }
        // A range still held here by another replica (typically the parent of a split this
        // node has not applied yet) must not be taken over: that replica would keep writing
        // older data into it. The split, or a snapshot of the parent, creates it later.
        if let Some(p) = self.peers.values().find(|p| p.descriptor().overlaps(&desc)) {
            tracing::debug!(
                node = self.node_id,
                shard = shard_id,
                overlapping = p.shard_id(),
                "not creating an overlapping replica yet"
            );
            return None;
        }
        Some(desc)
    }

    /// Proposes a write to `shard_id`.
    pub fn propose(&mut self, shard_id: u64, epoch: Epoch, ops: Vec<Op>, cb: WriteCallback) {
        self.wake_leader(shard_id);
        match self.peers.get_mut(&shard_id) {
            Some(peer) => peer.propose(epoch, ops, cb),
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

    /// This replica's data pinned at `index` by a `ComputeChecksum`, with the shard's range
    /// then. `ChecksumNotReady` while `index` is not applied here; `ChecksumMissed` when it
    /// applied past `index` without a pin there (it caught up by snapshot, a newer checksum
    /// replaced it, the pin expired, or the entry was refused at apply).
    pub fn checksum_pin(&self, shard_id: u64, index: u64) -> Result<PinnedData> {
        let peer = self.peers.get(&shard_id).ok_or(Error::ShardNotFound { shard_id })?;
        match &peer.checksum_pin {
            Some(pin) if pin.index == index => {
                let reader: Arc<dyn Reader + Send + Sync> = Arc::clone(&pin.snapshot) as _;
                Ok(PinnedData { index, range: pin.range.clone(), reader })
            }
            _ => {
                let applied = peer.raw.store().applied_index();
                if applied < index {
                    Err(Error::ChecksumNotReady { shard_id, index, applied })
                } else {
                    Err(Error::ChecksumMissed { shard_id, index })
                }
            }
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

    /// Starts a linearizable read on `shard_id`.
    pub fn read(&mut self, shard_id: u64, epoch: Epoch, request: ReadRequest, cb: ReadCallback) {
        self.wake_leader(shard_id);
        match self.peers.get_mut(&shard_id) {
            Some(peer) => peer.read(epoch, request, self.now, self.config.lease(), cb),
            None => cb(Err(Error::ShardNotFound { shard_id })),
        }
    }

    /// Asks the leader of `shard_id` to hand leadership to `to`.
    pub fn transfer_leader(&mut self, shard_id: u64, to: u64) -> Result<()> {
        self.wake(shard_id);
        let max_lag = self.config.max_transfer_lag_entries;
        let receiving_snapshot = self.outgoing.iter().any(|o| o.shard_id == shard_id && o.to == to);
        let peer = self.peers.get_mut(&shard_id).ok_or(Error::ShardNotFound { shard_id })?;
        if !peer.is_leader() {
            return Err(Error::NotLeader { shard_id, leader: peer.leader() });
        }
        let refuse = |reason: String| Err(Error::TransferRefused { shard_id, to, reason });
        if !peer.descriptor().replicas.iter().any(|r| r.node_id == to && r.is_voter()) {
            return refuse("not a voter of the shard".into());
        }
        let last = peer.raw.raft.raft_log.last_index();
        let Some(progress) = peer.raw.raft.prs().get(to) else { return refuse("no replication progress".into()) };
        if receiving_snapshot || progress.state == raft::ProgressState::Snapshot {
            return refuse("still receiving a snapshot".into());
        }
        if progress.matched + max_lag < last {
            return refuse(format!("{} entries behind (limit {max_lag})", last - progress.matched));
        }
        peer.raw.transfer_leader(to);
        Ok(())
    }

    /// Makes the replica of `shard_id` campaign now.
    pub fn campaign(&mut self, shard_id: u64) -> Result<()> {
        self.wake(shard_id);
        let peer = self.peers.get_mut(&shard_id).ok_or(Error::ShardNotFound { shard_id })?;
        peer.raw.campaign()?;
        Ok(())
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

    /// Asks the members of `newer` (a later configuration of the shard without this node, as
    /// the shard manager reports it) about this node's replica: each member at a newer
    /// configuration that leaves this node out answers with a tombstone, which destroys the
    /// replica. The manager's word alone destroys nothing. Returns whether it asked.
    pub fn probe_stale(&mut self, newer: &ShardDescriptor) -> bool {
        let Some(peer) = self.peers.get(&newer.id) else { return false };
        let mine = peer.descriptor().clone();
        if newer.epoch().conf_ver <= mine.epoch().conf_ver || newer.replicas.iter().any(|r| r.node_id == self.node_id) {
            return false;
        }
        // Bounded: the members of one configuration per replica, replaced by each probe.
        let asked = self.probed.entry(newer.id).or_default();
        asked.clear();
        for r in newer.replicas.iter().filter(|r| r.node_id != self.node_id) {
            if asked.len() >= MAX_PROBED_PER_SHARD {
                break;
            }
            asked.insert(r.node_id);
            self.pending_out.push(RaftEnvelope {
                shard_id: newer.id,
                from_node: self.node_id,
                to_node: r.node_id,
                descriptor: Some(mine.clone()),
                ..RaftEnvelope::default()
            });
        }
        true
    }

    /// Destroys this node's replica of `newer.id` if `newer` is a later configuration of the
    /// shard without this node: the replica missed its removal. Only a tombstone message from
    /// a member of `newer` brings the news (answering a message of the replica's, or a
    /// [`Store::probe_stale`]).
    pub(crate) fn tombstone(&mut self, newer: &ShardDescriptor) -> bool {
        let Some(peer) = self.peers.get_mut(&newer.id) else { return false };
        let mine = peer.descriptor().epoch().conf_ver;
        if newer.epoch().conf_ver <= mine || newer.replicas.iter().any(|r| r.node_id == self.node_id) {
            return false;
        }
        peer.removed = true;
        // Visit it in the next round, asleep or not, so that it is destroyed.
        self.touched.insert(newer.id);
        true
    }

    /// The state of every replica on this node, by shard id.
    pub fn statuses(&self) -> Vec<ShardStatus> {
        self.peers.keys().filter_map(|id| self.status(*id)).collect()
    }

    /// Ids of the shards with a replica here.
    pub fn shard_ids(&self) -> Vec<u64> {
        self.peers.keys().copied().collect()
    }

    /// Handles the ready state of every replica (see the module doc). Returns the messages to
    /// send. An error means the engine failed a write: the node must stop.
    pub fn process_ready(&mut self) -> Result<Vec<RaftEnvelope>> {
        let mut out: Vec<RaftEnvelope> = Vec::new();
        let mut done: Completions = Vec::new();
        let mut raft_wb = WriteBatch::new();
        let mut sync = false;
        let mut readies = Vec::new();
        let node_id = self.node_id;

        let mut snapshots_to_send: Vec<(u64, Message)> = Vec::new();
        // Awake replicas, and sleeping ones a message reached this round.
        // Each at most once: a second `ready()` before `advance` breaks raft-rs's bookkeeping.
        let visit: Vec<u64> = self.active.union(&self.touched).copied().collect();
        self.touched.clear();
        // Sources merged away this round: their replicas take no further part in it.
        let mut merged_now: BTreeSet<u64> = BTreeSet::new();
        // Snapshots installed this round: (shard, its new descriptor).
        let mut installed: Vec<(u64, ShardDescriptor)> = Vec::new();
        for shard_id in &visit {
            if merged_now.contains(shard_id) {
                continue;
            }
            let Some(peer) = self.peers.get_mut(shard_id) else { continue };
            peer.issue_reads(self.now);
            if !peer.pending_apply.is_empty() {
                // Entries waiting behind a CommitMerge, or left behind a ComputeChecksum: retry
                // them; take no new ready until they are through (this bounds what waits), nor
                // while a ComputeChecksum among them waits for its batch to be written.
                peer.apply(Vec::new(), &self.frozen, &mut raft_wb, &mut done)?;
                merged_now.extend(peer.merged_sources.iter().copied());
                peer.raw.advance_apply_to(peer.raw.store().applied_index());
                if !peer.pending_apply.is_empty() || peer.checksum_pending.is_some() {
                    continue;
                }
            }
            if !peer.raw.has_ready() {
                continue;
            }
            let mut rd = peer.raw.ready();
            let desc = peer.descriptor().clone();
            wrap(node_id, *shard_id, &desc, rd.take_messages(), &mut out, &mut snapshots_to_send);
            if rd.ss().is_some() {
                peer.on_role_change(&mut done);
                peer.idle_ticks = 0;
            }
            if !rd.entries().is_empty() || !rd.committed_entries().is_empty() {
                peer.idle_ticks = 0;
            }
            if !rd.snapshot().is_empty() {
                let snap = rd.snapshot().clone();
                let data: SnapshotData = wire::decode("snapshot data", &snap.data)?;
                let desc =
                    data.descriptor.ok_or(Error::Corrupt { what: "snapshot data", reason: "no descriptor".into() })?;
                installed.push((*shard_id, desc.clone()));
                // The data no longer follows this replica's log: its checksum pin is void.
                peer.drop_checksum_pin();
                snapshot::install(&self.engine, *shard_id, &desc.range()?)?;
                peer.raw.mut_store().apply_snapshot_metadata(&snap, desc, &mut raft_wb);
                tracing::info!(
                    node = node_id,
                    shard = shard_id,
                    index = snap.get_metadata().index,
                    "snapshot installed"
                );
                sync = true;
            }
            peer.on_read_states(rd.take_read_states(), self.config.lease());
            peer.apply(rd.take_committed_entries(), &self.frozen, &mut raft_wb, &mut done)?;
            merged_now.extend(peer.merged_sources.iter().copied());
            if !rd.entries().is_empty() {
                peer.raw.mut_store().append(rd.entries(), &mut raft_wb);
                sync = true;
            }
            if let Some(hs) = rd.hs() {
                peer.raw.mut_store().set_hard_state(hs, &mut raft_wb);
            }
            sync |= rd.must_sync();
            readies.push((*shard_id, rd));
        }
        for (by, desc) in installed {
            let mut superseded = Vec::new();
            for (other, p) in self.peers.iter().filter(|(id, p)| **id != by && p.descriptor().overlaps(&desc)) {
                // Checked when the message arrived: a source frozen into this shard (its
                // metadata goes, after anything it wrote this round; the data is the
                // snapshot's) or an empty replica (nothing on disk).
                if p.raw.store().is_initialized() {
                    crate::storage::destroy_metadata(p.descriptor(), &mut raft_wb);
                }
                superseded.push(*other);
            }
            merged_now.extend(superseded.iter().copied());
            if let Some(p) = self.peers.get_mut(&by) {
                p.merged_sources.extend(superseded); // dropped with the merged sources below
            }
        }
        if !raft_wb.is_empty() {
            self.engine.write(&raft_wb, WriteOptions { sync })?;
        }
        self.pin_checksums(&visit, !raft_wb.is_empty());

        let mut apply_wb = WriteBatch::new();
        for (shard_id, mut rd) in readies {
            if merged_now.contains(&shard_id) {
                continue;
            }
            let Some(peer) = self.peers.get_mut(&shard_id) else { continue };
            let desc = peer.descriptor().clone();
            wrap(node_id, shard_id, &desc, rd.take_persisted_messages(), &mut out, &mut snapshots_to_send);
            // `advance_append`, not `advance`: the latter marks every committed entry handed out
            // as applied, but entries behind a waiting CommitMerge are not; Raft learns the
            // applied index from the store below.
            let mut light = peer.raw.advance_append(rd);
            if let Some(commit) = light.commit_index() {
                peer.raw.mut_store().set_commit(commit, &mut apply_wb);
            }
            wrap(node_id, shard_id, &desc, light.take_messages(), &mut out, &mut snapshots_to_send);
            peer.apply(light.take_committed_entries(), &self.frozen, &mut apply_wb, &mut done)?;
            merged_now.extend(peer.merged_sources.iter().copied());
            // Entries waiting behind a CommitMerge or a ComputeChecksum are not applied: tell
            // Raft what is.
            peer.raw.advance_apply_to(peer.raw.store().applied_index());
            let applied = peer.raw.store().applied_index();
            let first = peer.raw.store().first_log_index();
            if applied.saturating_sub(first) > self.config.log_gc_threshold_entries {
                peer.raw.mut_store().compact_to(applied, &mut apply_wb)?;
            }
        }
        if !apply_wb.is_empty() {
            self.engine.write(&apply_wb, WriteOptions::NO_SYNC)?;
        }
        self.pin_checksums(&visit, !apply_wb.is_empty());
        self.start_split_shards(&visit)?;
        self.drop_merged_sources(&visit, &mut done);
        for shard_id in &visit {
            match self.peers.get(shard_id) {
                Some(p) if p.descriptor().merging_into.is_some() => {
                    self.frozen.insert(*shard_id, p.descriptor().clone());
                }
                _ => {
                    self.frozen.remove(shard_id);
                }
            }
        }
        for shard_id in &visit {
            if let Some(peer) = self.peers.get_mut(shard_id) {
                peer.serve_reads(&mut done);
                // A sleeping replica with work left (entries waiting to apply, a new ready) is
                // visited again next round.
                if peer.quiescent && (!peer.pending_apply.is_empty() || peer.raw.has_ready()) {
                    self.touched.insert(*shard_id);
                }
            }
        }
        for f in done {
            f();
        }
        self.destroy_removed(&visit)?;
        self.start_snapshots(snapshots_to_send);
        self.pump_snapshots(&mut out)?;
        out.append(&mut self.pending_out);
        Ok(out)
    }

    /// Starts the replicas of shards that splits created (their state is written by now).
    /// The new shard's replica on the parent's leader campaigns at once.
    fn start_split_shards(&mut self, visited: &[u64]) -> Result<()> {
        for parent_id in visited {
            let Some(parent) = self.peers.get_mut(parent_id) else { continue };
            if parent.split_created.is_empty() {
                continue;
            }
            let created = std::mem::take(&mut parent.split_created);
            let lead = parent.is_leader();
            for storage in created {
                let id = storage.shard_id();
                if let Some(existing) = self.peers.get(&id) {
                    if existing.raw.store().is_initialized() {
                        // Ids are unique in a cluster; this is a bug elsewhere. The state written
                        // by the split is the same one an initial replica has, so keep running.
                        tracing::error!(
                            node = self.node_id,
                            shard = id,
                            parent = parent_id,
                            "split created a shard id already in use here"
                        );
                        continue;
                    }
                }
                let mut peer = Peer::new(self.node_id, storage, &self.config)?;
                if lead {
                    peer.raw.campaign()?;
                }
                self.peers.insert(id, peer);
                self.active.insert(id);
            }
        }
        Ok(())
    }

    /// Drops the replicas of sources merged away this round (their metadata was destroyed in
    /// the target's apply batch; their data now belongs to the target).
    fn drop_merged_sources(&mut self, visited: &[u64], done: &mut Completions) {
        for target_id in visited {
            let Some(target) = self.peers.get_mut(target_id) else { continue };
            for source_id in std::mem::take(&mut target.merged_sources) {
                if self.forget_replica(source_id, "shard merged into its neighbour", done).is_some() {
                    tracing::info!(
                        node = self.node_id,
                        shard = source_id,
                        target = target_id,
                        "merged replica dropped"
                    );
                }
            }
        }
    }

    /// Removes a replica from memory (its waiting requests answered into `done`) and from
    /// every index of the store; its disk state is the caller's.
    fn forget_replica(&mut self, shard_id: u64, reason: &'static str, done: &mut Completions) -> Option<Peer<E>> {
        let mut peer = self.peers.remove(&shard_id)?;
        peer.fail_pending(reason, done);
        self.active.remove(&shard_id);
        self.touched.remove(&shard_id);
        self.frozen.remove(&shard_id);
        self.outgoing.retain(|o| o.shard_id != shard_id);
        self.ping_targets = None;
        Some(peer)
    }

    /// Destroys the replicas whose removal from their shard was applied.
    fn destroy_removed(&mut self, visited: &[u64]) -> Result<()> {
        let removed: Vec<u64> =
            visited.iter().copied().filter(|id| self.peers.get(id).is_some_and(|p| p.removed)).collect();
        for shard_id in removed {
            let mut done: Completions = Vec::new();
            let Some(peer) = self.forget_replica(shard_id, "replica removed from the shard", &mut done) else {
                continue;
            };
            let mut wb = WriteBatch::new();
            peer.raw.store().destroy(&mut wb)?;
            self.engine.write(&wb, WriteOptions::SYNC)?;
            tracing::info!(node = self.node_id, shard = shard_id, "replica removed and destroyed");
            for f in done {
                f();
            }
        }
        Ok(())
    }

    fn start_snapshots(&mut self, msgs: Vec<(u64, Message)>) {
        for (shard_id, msg) in msgs {
            let to = msg.to;
            let index = msg.snapshot.as_ref().and_then(|s| s.metadata.as_ref()).map_or(0, |m| m.index);
            let Some(peer) = self.peers.get_mut(&shard_id) else { continue };
            let started = peer
                .raw
                .store()
                .take_generated(index)
                .map(|g| OutgoingSnapshot::new(to, msg, g.descriptor, g.data, &self.config));
            match started {
                Some(Ok(o)) => {
                    self.outgoing.retain(|x| !(x.shard_id == shard_id && x.to == to));
                    tracing::info!(node = self.node_id, shard = shard_id, to, index, "sending snapshot");
                    self.outgoing.push(o);
                }
                Some(Err(e)) => {
                    tracing::warn!(node = self.node_id, shard = shard_id, to, error = %e, "cannot start snapshot");
                    peer.raw.report_snapshot(to, SnapshotStatus::Failure);
                }
                None => peer.raw.report_snapshot(to, SnapshotStatus::Failure),
            }
        }
    }

    fn pump_snapshots(&mut self, out: &mut Vec<RaftEnvelope>) -> Result<()> {
        let node_id = self.node_id;
        let mut failed = Vec::new();
        for (i, o) in self.outgoing.iter_mut().enumerate() {
            if self.snapshot_budget_bytes <= 0 {
                break;
            }
            match o.pump(node_id, &self.config, self.snapshot_budget_bytes, out) {
                Ok(used) => {
                    self.snapshot_budget_bytes -= used;
                    self.snapshot_bytes_sent += u64::try_from(used).unwrap_or(0);
                }
                Err(e) => {
                    tracing::warn!(node = node_id, shard = o.shard_id, to = o.to, error = %e, "snapshot export failed");
                    failed.push(i);
                }
            }
        }
        for i in failed.into_iter().rev() {
            let o = self.outgoing.remove(i);
            self.report_snapshot(o.shard_id, o.to, SnapshotStatus::Failure);
        }
        Ok(())
    }
}

/// Wraps outgoing Raft messages in envelopes; `MsgSnapshot`s are held back for the snapshot
/// transfer.
fn wrap(
    node_id: u64,
    shard_id: u64,
    desc: &ShardDescriptor,
    msgs: Vec<Message>,
    out: &mut Vec<RaftEnvelope>,
    snapshots: &mut Vec<(u64, Message)>,
) {
    for m in msgs {
        if m.get_msg_type() == MessageType::MsgSnapshot {
            snapshots.push((shard_id, m));
            continue;
        }
        out.push(RaftEnvelope {
            shard_id,
            from_node: node_id,
            to_node: m.to,
            descriptor: Some(desc.clone()),
            message: Some(m),
            ..RaftEnvelope::default()
        });
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

/// Why raft-rs must not see `msg`: a message no correct leader sends, on which raft-rs would
/// panic (a commit index beyond this log, entries that contradict committed ones). A buggy or
/// stale peer must not stop the node.
fn impossible<S: raft::Storage>(log: &raft::RaftLog<S>, msg: &Message) -> std::result::Result<(), &'static str> {
    match msg.get_msg_type() {
        // A leader sends a follower at most the commit index the follower's log reaches.
        MessageType::MsgHeartbeat if msg.commit > log.last_index() => Err("heartbeat commit beyond the log"),
        MessageType::MsgAppend => {
            // raft-rs appends only when the entry before `index` matches; entries it would then
            // overwrite must not be committed here.
            if log.match_term(msg.index, msg.log_term) {
                for e in msg.entries.iter().filter(|e| e.index <= log.committed) {
                    if log.term(e.index).ok() != Some(e.term) {
                        return Err("entries that contradict committed ones");
                    }
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use presage_engine::{range_checksum, MemEngine, Reader};

    use super::*;
    use crate::wire::Replica;

    /// A single-voter store, leading shard 1 over the whole key space.
    fn leading_store() -> (Store<MemEngine>, Epoch) {
        let epoch = Epoch { version: 1, conf_ver: 1 };
        let desc = ShardDescriptor {
            id: 1,
            start: Vec::new(),
            end: None,
            epoch: Some(epoch),
            replicas: vec![Replica::voter(1)],
            merging_into: None,
        };
        let mut store = Store::open(1, MemEngine::new(), RaftConfig::default()).expect("open");
        store.bootstrap_shard(desc).expect("bootstrap");
        store.campaign(1).expect("campaign");
        for _ in 0..3 {
            store.process_ready().expect("ready");
        }
        assert!(store.status(1).expect("replica").is_leader());
        (store, epoch)
    }

    fn put(key: &str) -> Vec<Op> {
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
        store.propose(1, epoch, put("a"), Box::new(|r| r.expect("write a")));
        store.propose_checksum(1, epoch, record(&index));
        store.propose(1, epoch, put("b"), Box::new(|r| r.expect("write b")));
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

    /// A follower of shard 1 (voters 1 and 2) on node 2.
    fn following_store() -> Store<MemEngine> {
        let desc = ShardDescriptor {
            id: 1,
            start: Vec::new(),
            end: None,
            epoch: Some(Epoch { version: 1, conf_ver: 1 }),
            replicas: vec![Replica::voter(1), Replica::voter(2)],
            merging_into: None,
        };
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
