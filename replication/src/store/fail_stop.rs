//! Fail-stop after hand-off. A failed engine write may leave a node's in-memory Raft state
//! ahead of its disk, so the node must never again acknowledge, vote, apply or serve: a disk
//! that lied once is not trusted. Stopping at once, though, strands its leaderships until the
//! followers' election timers fire, and every request for those shards waits meanwhile. So
//! the node first hands them away, writing nothing, then stops.
//!
//! Walk-through (driven by the runtime, `runtime.rs`):
//!
//! 1. **begin** ([`Store::begin_fail_stop`]): every published lease is withdrawn (no read is
//!    served off the loop any more), and each shard this node leads starts a transfer to its
//!    most caught-up voter. A leader sends its appends before its own fsync, so the followers
//!    usually hold everything and the transfer's `MsgTimeoutNow` leaves in the next round.
//! 2. **rounds that write nothing** ([`Store::process_ready_failing`]): each replica's ready
//!    gives only the messages that need no persistence (a leader's appends and heartbeats, the
//!    `MsgTimeoutNow`). Entries, hard state, snapshots, committed entries, acknowledgements and
//!    votes are dropped, and raft-rs is never told anything persisted, so this replica never
//!    counts toward a commit. Incoming Raft messages step existing replicas only
//!    ([`Store::step_failing`]: no snapshot data, no new replicas); client requests are
//!    refused `DiskFailed` (nothing was done).
//! 3. **stop**: once no replica here leads (each stepped down on the new leader's higher
//!    term), or after `fail-stop-timeout-ms`, the loop ends and the node process exits; a
//!    restart recovers from what is durable.
//!
//! Proposals already in flight are neither acknowledged nor refused: their callers see the
//! node stop (an unknown outcome), since another leader may still commit them.

use super::*;

impl<E: Engine> Store<E> {
    /// Starts failing (see the module doc): withdraws every lease and starts handing every
    /// leadership away. Returns the transfers started, `(shard, to)`.
    pub fn begin_fail_stop(&mut self) -> Vec<(u64, u64)> {
        self.failing = true;
        for peer in self.peers.values_mut() {
            peer.end_lease();
        }
        self.shed_leaderships()
    }

    /// Has an engine write failed here (the node only hands its leaderships away now)?
    pub fn is_failing(&self) -> bool {
        self.failing
    }

    /// Does any replica here lead its shard?
    pub fn leads_any(&self) -> bool {
        self.peers.values().any(Peer::is_leader)
    }

    /// Steps the Raft message of `env` into its replica, if this node has one; nothing that
    /// writes (snapshot data, new replicas, tombstones) is taken.
    pub fn step_failing(&mut self, env: RaftEnvelope) {
        debug_assert!(self.failing);
        let Some(msg) = env.message else { return };
        if env.to_node != self.node_id || msg.from != env.from_node || msg.to != self.node_id {
            return;
        }
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            return;
        }
        if let Some(peer) = self.peers.get_mut(&env.shard_id) {
            if let Err(e) = peer.raw.step(msg) {
                tracing::debug!(node = self.node_id, shard = env.shard_id, error = %e, "message not taken while failing");
            }
        }
    }

    /// Advances every replica's Raft clock (heartbeats, the transfer's timeout), nothing else.
    pub fn tick_failing(&mut self) {
        debug_assert!(self.failing);
        for peer in self.peers.values_mut() {
            peer.raw.tick();
        }
    }

    /// A round that writes nothing (see the module doc): sends each replica's messages that
    /// need no persistence, drops the rest.
    pub fn process_ready_failing(&mut self, send: &mut dyn FnMut(RaftEnvelope)) {
        debug_assert!(self.failing);
        let node_id = self.node_id;
        let mut out = Vec::new();
        let mut snapshots = Vec::new();
        for (shard_id, peer) in self.peers.iter_mut() {
            if !peer.raw.has_ready() {
                continue;
            }
            let mut rd = peer.raw.ready();
            let desc = peer.descriptor().clone();
            let fresh = ready::fresh_replicas(peer);
            ready::wrap(node_id, *shard_id, &desc, &fresh, rd.take_messages(), &mut out, &mut snapshots);
            // Persisted messages (acknowledgements, votes), entries, hard state and committed
            // entries need the disk: dropped. Raft hears of no persistence.
            drop(rd.take_persisted_messages());
            drop(rd.take_committed_entries());
            peer.raw.advance_append_async(rd);
        }
        out.into_iter().for_each(send);
    }
}
