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

use std::collections::BTreeMap;

use presage_engine::{for_each_pair, Cf, Engine, WriteBatch, WriteOptions};
use raft::eraftpb::{ConfChangeV2, Message, MessageType};
use raft::{SnapshotStatus, StateRole};

use crate::config::RaftConfig;
use crate::error::{Error, Result};
use crate::keys;
use crate::peer::{Completions, Peer, ReadCallback, ReadRequest, WriteCallback};
use crate::snapshot::{self, AckOutcome, OutgoingSnapshot};
use crate::storage::PeerStorage;
use crate::wire::{self, Epoch, Op, RaftEnvelope, ShardDescriptor, SnapshotData};

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
}

/// All replicas of one node.
pub struct Store<E: Engine> {
    node_id: u64,
    engine: E,
    config: RaftConfig,
    peers: BTreeMap<u64, Peer<E>>,
    /// Snapshot transfers this node is sending.
    outgoing: Vec<OutgoingSnapshot<E>>,
    /// Bytes of snapshot data this node may still send (refilled every tick).
    snapshot_budget_bytes: i64,
    /// Envelopes produced outside a ready round (acknowledgements, resends).
    pending_out: Vec<RaftEnvelope>,
}

impl<E: Engine> Store<E> {
    /// Opens the store of `node_id`, recovering every replica persisted in `engine`.
    pub fn open(node_id: u64, engine: E, config: RaftConfig) -> Result<Self> {
        config.validate()?;
        let mut shard_ids = Vec::new();
        for_each_pair(&engine, Cf::Meta, &keys::descriptor_range(), |_, v| {
            if let Ok(d) = wire::decode::<ShardDescriptor>("shard descriptor", v) {
                shard_ids.push(d.id);
            }
            Ok(())
        })?;
        let mut peers = BTreeMap::new();
        for shard_id in shard_ids {
            if let Some(storage) = PeerStorage::load(engine.clone(), shard_id)? {
                peers.insert(shard_id, Peer::new(node_id, storage, &config)?);
            }
        }
        tracing::info!(node = node_id, replicas = peers.len(), "store opened");
        Ok(Store {
            node_id,
            engine,
            config,
            peers,
            outgoing: Vec::new(),
            snapshot_budget_bytes: 0,
            pending_out: Vec::new(),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Creates a brand-new shard replica from `descriptor` (cluster bootstrap): every listed
    /// replica must be bootstrapped with the same descriptor.
    pub fn bootstrap_shard(&mut self, descriptor: ShardDescriptor) -> Result<()> {
        if self.peers.contains_key(&descriptor.id) {
            return Err(Error::Config(format!("shard {} already exists on node {}", descriptor.id, self.node_id)));
        }
        descriptor.range()?;
        if !descriptor.replicas.iter().any(|r| r.node_id == self.node_id) {
            return Err(Error::Config(format!("node {} is not a replica of shard {}", self.node_id, descriptor.id)));
        }
        let mut wb = WriteBatch::new();
        let shard_id = descriptor.id;
        let storage = PeerStorage::initial(self.engine.clone(), descriptor, &mut wb);
        self.engine.write(&wb, WriteOptions::SYNC)?;
        self.peers.insert(shard_id, Peer::new(self.node_id, storage, &self.config)?);
        Ok(())
    }

    /// Advances every replica's logical clock by one tick.
    pub fn tick(&mut self) {
        let max_read_age_ticks = 2 * self.config.election_ticks;
        for peer in self.peers.values_mut() {
            peer.raw.tick();
            peer.expire_reads(max_read_age_ticks);
        }
        let per_tick = i64::try_from(self.config.snapshot_bytes_per_tick()).unwrap_or(i64::MAX);
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
                    snapshot_chunk: None,
                    snapshot_ack: None,
                    tombstone: false,
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
                // A newer configuration without us: this replica is gone.
                if let Some(d) = &env.descriptor {
                    if theirs > mine.epoch().conf_ver && !d.replicas.iter().any(|r| r.node_id == self.node_id) {
                        peer.removed = true;
                    }
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
                    message: None,
                    snapshot_chunk: None,
                    snapshot_ack: None,
                    tombstone: true,
                });
                return Ok(());
            }
        }
        let Some(msg) = env.message else { return Ok(()) };
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
        }
        if !self.peers.contains_key(&env.shard_id) {
            let Some(desc) = self.replica_to_create(env.shard_id, &msg, env.descriptor) else { return Ok(()) };
            let storage = PeerStorage::uninitialized(self.engine.clone(), desc);
            self.peers.insert(env.shard_id, Peer::new(self.node_id, storage, &self.config)?);
        }
        let Some(peer) = self.peers.get_mut(&env.shard_id) else { return Ok(()) };
        match peer.raw.step(msg) {
            Ok(()) | Err(raft::Error::StepPeerNotFound) | Err(raft::Error::StepLocalMsg) => Ok(()),
            Err(e) => {
                tracing::debug!(node = self.node_id, shard = env.shard_id, error = %e, "raft refused a message");
                Ok(())
            }
        }
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
        (creating && desc.id == shard_id && desc.replicas.iter().any(|r| r.node_id == self.node_id)).then_some(desc)
    }

    /// Proposes a write to `shard_id`.
    pub fn propose(&mut self, shard_id: u64, epoch: Epoch, ops: Vec<Op>, cb: WriteCallback) {
        match self.peers.get_mut(&shard_id) {
            Some(peer) => peer.propose(epoch, ops, cb),
            None => cb(Err(Error::ShardNotFound { shard_id })),
        }
    }

    /// Proposes a membership change of `shard_id`.
    pub fn propose_conf_change(&mut self, shard_id: u64, cc: ConfChangeV2, cb: WriteCallback) {
        match self.peers.get_mut(&shard_id) {
            Some(peer) => peer.propose_conf_change(cc, cb),
            None => cb(Err(Error::ShardNotFound { shard_id })),
        }
    }

    /// Starts a linearizable read on `shard_id`.
    pub fn read(&mut self, shard_id: u64, epoch: Epoch, request: ReadRequest, cb: ReadCallback) {
        match self.peers.get_mut(&shard_id) {
            Some(peer) => peer.read(epoch, request, cb),
            None => cb(Err(Error::ShardNotFound { shard_id })),
        }
    }

    /// Asks the leader of `shard_id` to hand leadership to `to`.
    pub fn transfer_leader(&mut self, shard_id: u64, to: u64) -> Result<()> {
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
        })
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
        for (shard_id, peer) in self.peers.iter_mut() {
            peer.issue_reads();
            if !peer.raw.has_ready() {
                continue;
            }
            let mut rd = peer.raw.ready();
            let desc = peer.descriptor().clone();
            wrap(node_id, *shard_id, &desc, rd.take_messages(), &mut out, &mut snapshots_to_send);
            if rd.ss().is_some() {
                peer.on_role_change(&mut done);
            }
            if !rd.snapshot().is_empty() {
                let snap = rd.snapshot().clone();
                let data: SnapshotData = wire::decode("snapshot data", &snap.data)?;
                let desc =
                    data.descriptor.ok_or(Error::Corrupt { what: "snapshot data", reason: "no descriptor".into() })?;
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
            peer.on_read_states(rd.take_read_states());
            peer.apply(rd.take_committed_entries(), &mut raft_wb, &mut done)?;
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
        if !raft_wb.is_empty() {
            self.engine.write(&raft_wb, WriteOptions { sync })?;
        }

        let mut apply_wb = WriteBatch::new();
        for (shard_id, mut rd) in readies {
            let Some(peer) = self.peers.get_mut(&shard_id) else { continue };
            let desc = peer.descriptor().clone();
            wrap(node_id, shard_id, &desc, rd.take_persisted_messages(), &mut out, &mut snapshots_to_send);
            let mut light = peer.raw.advance(rd);
            if let Some(commit) = light.commit_index() {
                peer.raw.mut_store().set_commit(commit, &mut apply_wb);
            }
            wrap(node_id, shard_id, &desc, light.take_messages(), &mut out, &mut snapshots_to_send);
            peer.apply(light.take_committed_entries(), &mut apply_wb, &mut done)?;
            peer.raw.advance_apply();
            let applied = peer.raw.store().applied_index();
            let first = peer.raw.store().first_log_index();
            if applied.saturating_sub(first) > self.config.log_gc_threshold_entries {
                peer.raw.mut_store().compact_to(applied, &mut apply_wb)?;
            }
        }
        if !apply_wb.is_empty() {
            self.engine.write(&apply_wb, WriteOptions::NO_SYNC)?;
        }
        for peer in self.peers.values_mut() {
            peer.serve_reads(&mut done);
        }
        for f in done {
            f();
        }
        self.destroy_removed()?;
        self.start_snapshots(snapshots_to_send);
        self.pump_snapshots(&mut out)?;
        out.append(&mut self.pending_out);
        Ok(out)
    }

    /// Destroys the replicas whose removal from their shard was applied.
    fn destroy_removed(&mut self) -> Result<()> {
        let removed: Vec<u64> = self.peers.iter().filter(|(_, p)| p.removed).map(|(id, _)| *id).collect();
        for shard_id in removed {
            let Some(mut peer) = self.peers.remove(&shard_id) else { continue };
            let mut done: Completions = Vec::new();
            peer.fail_pending("replica removed from the shard", &mut done);
            let mut wb = WriteBatch::new();
            peer.raw.store().destroy(&mut wb)?;
            self.engine.write(&wb, WriteOptions::SYNC)?;
            self.outgoing.retain(|o| o.shard_id != shard_id);
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
                Ok(used) => self.snapshot_budget_bytes -= used,
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
            snapshot_chunk: None,
            snapshot_ack: None,
            tombstone: false,
        });
    }
}
