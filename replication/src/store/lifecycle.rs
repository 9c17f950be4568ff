//! Replica lifecycle: shards a split creates are started (the parent's leader's new replica
//! campaigns at once); sources merged away and replicas removed from their group are destroyed
//! (log, states, data) with a tombstone at their `conf_ver`; a stale replica is found by asking
//! the newer configuration's members (`probe_stale`), a replica of a shard merged away while
//! this node was out of its group by asking the members of the shard now holding its start key
//! (`probe_merged`).

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
        self.send_probes(&mine, newer);
        true
    }

    /// Sends `mine` (this node's replica's descriptor) to the members of `to` but this node,
    /// and remembers them as asked. Bounded: at most `MAX_PROBED_PER_SHARD` per replica,
    /// replaced by each probe.
    fn send_probes(&mut self, mine: &ShardDescriptor, to: &ShardDescriptor) {
        let asked = self.probed.entry(mine.id).or_default();
        asked.clear();
        for r in to.replicas.iter().filter(|r| r.node_id != self.node_id) {
            if asked.len() >= MAX_PROBED_PER_SHARD {
                break;
            }
            asked.insert(r.node_id);
            self.pending_out.push(RaftEnvelope {
                shard_id: mine.id,
                from_node: self.node_id,
                to_node: r.node_id,
                descriptor: Some(mine.clone()),
                ..RaftEnvelope::default()
            });
        }
    }

    /// Asks the members of `owner` (the shard that, in the manager's directory, holds the start
    /// key of this node's replica `shard_id`, a shard the directory no longer lists) whether
    /// `shard_id` was merged away. A member whose replica of another shard holds that key at a
    /// later version answers with a merged tombstone ([`Store::merged_owner`]), which destroys
    /// the replica. Returns whether it asked.
    pub fn probe_merged(&mut self, shard_id: u64, owner: &ShardDescriptor) -> bool {
        let Some(peer) = self.peers.get(&shard_id) else { return false };
        let mine = peer.descriptor().clone();
        if owner.id == shard_id
            || !owner.contains(&mine.start)
            || owner.replicas.iter().all(|r| r.node_id == self.node_id)
        {
            return false;
        }
        self.send_probes(&mine, owner);
        true
    }

    /// This node's replica of another shard that proves `gone` merged away: it holds `gone`'s
    /// start key at a later version than `gone`'s. A shard keeps its start key until it is
    /// merged away (a split keeps the left part; a merge's target is the source's left
    /// neighbour, so a range only ever grows at its end), and every handover of a key (split:
    /// parent to child; merge: source to target) raises the version, so a shard that holds
    /// the key at a version above any `gone` had can only hold it after `gone` was merged.
    /// A node still holding a live replica of `gone` answers nothing.
    pub(super) fn merged_owner(&self, gone: &ShardDescriptor) -> Option<ShardDescriptor> {
        let live = self.peers.get(&gone.id);
        if live.is_some_and(|p| p.raw.store().is_initialized() && p.descriptor().merging_into.is_none()) {
            return None;
        }
        self.peers
            .values()
            .filter(|p| p.shard_id() != gone.id && p.raw.store().is_initialized())
            .map(Peer::descriptor)
            .find(|d| d.contains(&gone.start) && d.epoch().version > gone.epoch().version)
            .cloned()
    }

    /// Destroys this node's replica of `shard_id` on a member's word that its shard was merged
    /// away (`owner`: the member's replica holding the shard's start key, see
    /// [`Store::merged_owner`]), unless the replica is frozen into a shard this node also
    /// holds: that replica's `CommitMerge` (or a snapshot of it) takes it over.
    pub(crate) fn merged_away(&mut self, shard_id: u64, from: u64, owner: &ShardDescriptor) -> bool {
        let Some(peer) = self.peers.get(&shard_id) else { return false };
        let mine = peer.descriptor();
        let proves = owner.id != shard_id
            && owner.contains(&mine.start)
            && owner.epoch().version > mine.epoch().version
            && owner.replicas.iter().any(|r| r.node_id == from);
        if !proves || mine.merging_into.is_some_and(|target| self.peers.contains_key(&target)) {
            return false;
        }
        tracing::info!(node = self.node_id, shard = shard_id, owner = owner.id, from, "replica of a shard merged away");
        self.condemned.insert(shard_id);
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
        self.probed.remove(&shard_id);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Replica;
    use presage_engine::MemEngine;

    fn shard(id: u64, start: &[u8], version: u64, nodes: &[u64]) -> ShardDescriptor {
        ShardDescriptor {
            id,
            start: start.to_vec(),
            end: None,
            epoch: Some(Epoch { version, conf_ver: 4 }),
            replicas: nodes.iter().map(|n| Replica::voter(*n)).collect(),
            merging_into: None,
        }
    }

    fn store_with(node: u64, shards: Vec<ShardDescriptor>) -> Store<MemEngine> {
        let mut store = Store::open(node, MemEngine::new(), RaftConfig::default()).expect("open");
        store.bootstrap_shards(shards).expect("bootstrap");
        store.process_ready().expect("ready");
        store
    }

    /// Node 2 kept a replica of shard 7 (`[m, ∞)` at version 3) that was merged away while
    /// node 2 was out of its group; node 1 holds shard 5, which holds `m` now.
    fn answer(owner_version: u64) -> (Store<MemEngine>, Vec<RaftEnvelope>) {
        let mut stale = store_with(2, vec![shard(7, b"m", 3, &[2, 4])]);
        let mut member = store_with(1, vec![shard(5, b"", owner_version, &[1, 3])]);
        assert!(stale.probe_merged(7, &shard(5, b"", owner_version, &[1, 3])));
        let asked: Vec<RaftEnvelope> = std::mem::take(&mut stale.pending_out);
        assert_eq!(asked.iter().map(|e| e.to_node).collect::<Vec<_>>(), [1, 3], "the owner's members are asked");
        member.pending_out.clear();
        member.step(asked[0].clone()).expect("step");
        let replies = std::mem::take(&mut member.pending_out);
        (stale, replies)
    }

    #[test]
    fn a_replica_of_a_shard_merged_away_is_destroyed_on_the_word_of_the_holder_of_its_start() {
        let (mut stale, replies) = answer(6);
        assert_eq!(replies.len(), 1, "{replies:?}");
        let reply = replies[0].clone();
        assert!(reply.tombstone && reply.merged && reply.to_node == 2);
        assert_eq!(reply.descriptor.as_ref().map(|d| d.id), Some(5));
        // The same answer from a node this node did not ask counts for nothing.
        stale.step(RaftEnvelope { from_node: 9, ..reply.clone() }).expect("step");
        stale.process_ready().expect("ready");
        assert!(stale.status(7).is_some(), "node 9 was not asked");
        stale.step(reply).expect("step");
        stale.process_ready().expect("ready");
        assert!(stale.status(7).is_none(), "the member's word destroys it");
        assert!(stale.engine.get(Cf::Meta, &keys::tombstone_key(7)).expect("read").is_some(), "with a tombstone");
    }

    /// A holder of the start key at a version not above the replica's may be the parent of a
    /// split this replica's shard came from (a lagging copy of it): no proof of a merge.
    #[test]
    fn a_holder_at_an_older_version_proves_nothing() {
        let (_, replies) = answer(3);
        assert!(replies.is_empty(), "{replies:?}");
        let (_, replies) = answer(2);
        assert!(replies.is_empty(), "{replies:?}");
    }

    /// A replica frozen into a shard this node also holds is left to that shard's
    /// `CommitMerge` (it needs the frozen replica's data).
    #[test]
    fn a_replica_frozen_into_a_shard_held_here_is_kept() {
        let frozen = ShardDescriptor { merging_into: Some(6), ..shard(7, b"m", 3, &[2, 4]) };
        let target = ShardDescriptor { end: Some(b"m".to_vec()), ..shard(6, b"", 2, &[2, 4]) };
        let mut store = store_with(2, vec![target, frozen]);
        assert!(!store.merged_away(7, 1, &shard(5, b"", 6, &[1, 3])));
        assert!(store.status(7).is_some());
        // Without a replica of its target here, nothing will take it over.
        let lone = ShardDescriptor { merging_into: Some(6), ..shard(7, b"m", 3, &[2, 4]) };
        let mut store = store_with(2, vec![lone]);
        assert!(!store.merged_away(7, 9, &shard(5, b"", 6, &[1, 3])), "the sender must be a member of the owner");
        assert!(store.merged_away(7, 1, &shard(5, b"", 6, &[1, 3])));
    }
}
