//! Incoming Raft messages. Walk-through: an envelope is checked (addressed here, its Raft
//! message's replicas are its nodes, nothing raft-rs would panic on); snapshot chunks are staged;
//! a tombstone counts only from a member of both configurations or a node this node asked (a
//! probe about a shard merged away is answered by a replica holding its start key later); a
//! message for a shard this node does not hold creates an empty replica when the sender lists it
//! (never over a range a live replica still holds); then raft-rs steps it.

use super::*;

impl<E: Engine> Store<E> {
    /// Hands a Raft message to its replica, creating the replica if this node was just
    /// added to the shard.
    pub fn step(&mut self, mut env: RaftEnvelope) -> Result<()> {
        if env.to_node != self.node_id {
            tracing::warn!(node = self.node_id, to = env.to_node, "dropping a message addressed to another node");
            return Ok(());
        }
        self.last_heard.insert(env.from_node, self.ticks);
        self.lease_views.clock.record(env.from_node, env.clock_ms, Instant::now());
        self.silent.remove(&env.from_node);
        if env.ping {
            return Ok(());
        }
        // A probe carries only the sender's descriptor (`probe_stale`, `probe_merged`).
        let probe =
            env.message.is_none() && !env.tombstone && env.snapshot_chunk.is_none() && env.snapshot_ack.is_none();
        if let Some(ack) = env.snapshot_ack.take() {
            self.on_snapshot_ack(&env, &ack);
        }
        if let Some(chunk) = env.snapshot_chunk.take() {
            let initialized_past = self
                .peers
                .get(&env.shard_id)
                .is_some_and(|p| p.raw.store().is_initialized() && p.raw.store().applied_index() >= chunk.index);
            // A staged snapshot already handed to Raft and not installed yet keeps its staging:
            // a newer stream waits (unacknowledged, the sender resends) until the install.
            let install_pending =
                self.peers.get(&env.shard_id).is_some_and(|p| p.raw.raft.raft_log.unstable_snapshot().is_some());
            if !initialized_past && !install_pending {
                let ack = snapshot::receive_chunk(&self.engine, self.node_id, &env, &chunk)?;
                self.pending_out.push(ack);
            }
        }
        if env.tombstone && env.merged {
            // Counts only as the answer to this node's `probe_merged`.
            let from = env.from_node;
            let asked = self.probed.get(&env.shard_id).is_some_and(|p| p.contains(&from));
            match env.descriptor.as_ref() {
                Some(owner) if asked => {
                    if self.merged_away(env.shard_id, from, owner) {
                        self.probed.remove(&env.shard_id);
                    }
                }
                _ => tracing::warn!(
                    node = self.node_id,
                    shard = env.shard_id,
                    from,
                    "a merged tombstone not asked for; ignored"
                ),
            }
            return Ok(());
        }
        if probe {
            let gone = env.descriptor.as_ref().filter(|d| d.id == env.shard_id);
            if let Some(owner) = gone.and_then(|d| self.merged_owner(d)) {
                self.pending_out.push(RaftEnvelope {
                    shard_id: env.shard_id,
                    from_node: self.node_id,
                    to_node: env.from_node,
                    descriptor: Some(owner),
                    tombstone: true,
                    merged: true,
                    ..RaftEnvelope::default()
                });
                return Ok(());
            }
        }
        if let Some(peer) = self.peers.get_mut(&env.shard_id) {
            let mine = peer.descriptor().clone();
            let theirs = env.sender_conf_ver();
            if env.tombstone {
                // A newer configuration without us: this replica is gone. It counts only from
                // a member of that configuration who is also a member of ours, or whom this
                // node asked (`probe_stale`): a node outside the group cannot destroy it.
                let from = env.from_node;
                let known = mine.replicas.iter().any(|r| r.node_id == from)
                    || self.probed.get(&env.shard_id).is_some_and(|p| p.contains(&from));
                match &env.descriptor {
                    Some(d) if known && d.id == env.shard_id && d.replicas.iter().any(|r| r.node_id == from) => {
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
            self.peers
                .insert(env.shard_id, Peer::new(self.node_id, storage, &self.config, Arc::clone(&self.lease_views))?);
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
    pub(super) fn replica_to_create(
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
}

/// Why raft-rs must not see `msg`: a message no correct leader sends, on which raft-rs would
/// panic (a commit index beyond this log, entries that contradict committed ones). A buggy or
/// stale peer must not stop the node.
pub(super) fn impossible<S: raft::Storage>(
    log: &raft::RaftLog<S>,
    msg: &Message,
) -> std::result::Result<(), &'static str> {
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
