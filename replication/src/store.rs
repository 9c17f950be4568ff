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
use raft::StateRole;

use crate::config::RaftConfig;
use crate::error::{Error, Result};
use crate::keys;
use crate::peer::{Completions, Peer, ReadCallback, ReadRequest, WriteCallback};
use crate::storage::PeerStorage;
use crate::wire::{self, Epoch, Op, RaftEnvelope, ShardDescriptor};

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
        Ok(Store { node_id, engine, config, peers })
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
    }

    /// Hands a Raft message to its replica, creating the replica if this node was just
    /// added to the shard.
    pub fn step(&mut self, env: RaftEnvelope) -> Result<()> {
        let Some(msg) = env.message else { return Ok(()) };
        if env.to_node != self.node_id {
            tracing::warn!(node = self.node_id, to = env.to_node, "dropping a message addressed to another node");
            return Ok(());
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
        let peer = self.peers.get_mut(&shard_id).ok_or(Error::ShardNotFound { shard_id })?;
        if !peer.is_leader() {
            return Err(Error::NotLeader { shard_id, leader: peer.leader() });
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

        for (shard_id, peer) in self.peers.iter_mut() {
            peer.issue_reads();
            if !peer.raw.has_ready() {
                continue;
            }
            let mut rd = peer.raw.ready();
            let desc = peer.descriptor().clone();
            wrap(node_id, *shard_id, &desc, rd.take_messages(), &mut out);
            if rd.ss().is_some() {
                peer.on_role_change(&mut done);
            }
            if !rd.snapshot().is_empty() {
                // Installing a received snapshot needs its streamed data; until the snapshot
                // transfer is in place a replica cannot accept one.
                tracing::warn!(
                    node = node_id,
                    shard = shard_id,
                    "snapshot received but snapshot install is not available"
                );
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
            wrap(node_id, shard_id, &desc, rd.take_persisted_messages(), &mut out);
            let mut light = peer.raw.advance(rd);
            if let Some(commit) = light.commit_index() {
                peer.raw.mut_store().set_commit(commit, &mut apply_wb);
            }
            wrap(node_id, shard_id, &desc, light.take_messages(), &mut out);
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
        Ok(out)
    }
}

fn wrap(node_id: u64, shard_id: u64, desc: &ShardDescriptor, msgs: Vec<Message>, out: &mut Vec<RaftEnvelope>) {
    for m in msgs {
        out.push(RaftEnvelope {
            shard_id,
            from_node: node_id,
            to_node: m.to,
            descriptor: Some(desc.clone()),
            message: Some(m),
        });
    }
}
