//! Replica lifecycle: shards a split creates are started (the parent's leader's new replica
//! campaigns at once); sources merged away and replicas removed from their group are destroyed
//! (log, states, data) with a tombstone at their `conf_ver`; a stale replica is found by asking
//! the newer configuration's members (`probe_stale`).

use super::*;

impl<E: Engine> Store<E> {
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
        let Some(peer) = self.peers.get(&newer.id) else { return false };
        let mine = peer.descriptor().epoch().conf_ver;
        if newer.epoch().conf_ver <= mine || newer.replicas.iter().any(|r| r.node_id == self.node_id) {
            return false;
        }
        // Bounded by the replicas of this node.
        self.condemned.insert(newer.id);
        true
    }

    /// Starts the replicas of shards that splits created (their state is written by now).
    /// The new shard's replica on the parent's leader campaigns at once.
    pub(super) fn start_split_shards(&mut self, round: &mut BTreeMap<u64, Applied<E>>) -> Result<()> {
        for (parent_id, applied) in round.iter_mut() {
            if applied.split_created.is_empty() {
                continue;
            }
            let created = std::mem::take(&mut applied.split_created);
            let lead = self.peers.get(parent_id).is_some_and(|p| p.is_leader());
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
                let mut peer = Peer::new(self.node_id, storage, &self.config, Arc::clone(&self.lease_views))?;
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
    pub(super) fn drop_merged_sources(
        &mut self,
        round: &BTreeMap<u64, Applied<E>>,
        done: &mut Completions,
    ) -> Result<()> {
        let mut wb = WriteBatch::new();
        for (target_id, applied) in round {
            for &source_id in &applied.merged_sources {
                if let Some(peer) = self.forget_replica(source_id, "shard merged into its neighbour", done) {
                    // Its metadata went with the merge's apply (or the install); the round's
                    // log batch, written since, may have touched its raft state again.
                    if peer.raw.store().is_initialized() {
                        crate::storage::destroy_metadata(peer.descriptor(), &mut wb);
                    }
                    tracing::info!(
                        node = self.node_id,
                        shard = source_id,
                        target = target_id,
                        "merged replica dropped"
                    );
                }
            }
        }
        if !wb.is_empty() {
            self.engine.write(&wb, WriteOptions::NO_SYNC)?;
        }
        Ok(())
    }

    /// Removes a replica from memory (its waiting requests answered into `done`) and from
    /// every index of the store; its disk state is the caller's.
    pub(super) fn forget_replica(
        &mut self,
        shard_id: u64,
        reason: &'static str,
        done: &mut Completions,
    ) -> Option<Peer<E>> {
        let mut peer = self.peers.remove(&shard_id)?;
        peer.fail_pending(reason, done);
        self.active.remove(&shard_id);
        self.touched.remove(&shard_id);
        self.frozen.remove(&shard_id);
        self.outgoing.retain(|o| o.shard_id != shard_id);
        self.ping_targets = None;
        Some(peer)
    }

    /// Destroys the replicas whose removal from their shard was applied this round, and
    /// those a tombstone condemned.
    pub(super) fn destroy_removed(&mut self, round: &BTreeMap<u64, Applied<E>>) -> Result<()> {
        let mut removed = std::mem::take(&mut self.condemned);
        removed.extend(round.iter().filter(|(_, a)| a.removed).map(|(id, _)| *id));
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
}
