//! The ready round. Walk-through: every awake replica (and each sleeping one a message reached)
//! is visited once; its ready state's log appends, hard state, installed snapshot and
//! already-persisted committed entries go into one engine batch with one sync for all
//! replicas (group commit); the messages go out; then `advance_append` hands back the entries
//! committed meanwhile, applied in a second, unsynced batch; callbacks run after their batch.
//! Each apply returns what it did ([`Applied`]), gathered per replica for the round: checksum
//! pins are taken right after the batch that holds them, then split-off shards start, merged-away
//! sources are dropped and removed replicas destroyed.

use super::*;

impl<E: Engine> Store<E> {
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
        // What each replica's apply did this round, acted on once its batch is written.
        let mut round: BTreeMap<u64, Applied<E>> = BTreeMap::new();
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
                let applied = peer.apply(Vec::new(), &self.frozen, &mut raft_wb, &mut done)?;
                merged_now.extend(applied.merged_sources.iter().copied());
                let pin_waits = applied.checksum_at.is_some();
                round.entry(*shard_id).or_default().absorb(applied);
                peer.raw.advance_apply_to(peer.raw.store().applied_index());
                if !peer.pending_apply.is_empty() || pin_waits {
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
            let applied = peer.apply(rd.take_committed_entries(), &self.frozen, &mut raft_wb, &mut done)?;
            merged_now.extend(applied.merged_sources.iter().copied());
            round.entry(*shard_id).or_default().absorb(applied);
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
            // Dropped with the merged sources below.
            round.entry(by).or_default().merged_sources.extend(superseded);
        }
        if !raft_wb.is_empty() {
            self.engine.write(&raft_wb, WriteOptions { sync })?;
        }
        self.pin_checksums(&mut round, !raft_wb.is_empty());

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
            let applied = peer.apply(light.take_committed_entries(), &self.frozen, &mut apply_wb, &mut done)?;
            merged_now.extend(applied.merged_sources.iter().copied());
            round.entry(shard_id).or_default().absorb(applied);
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
        self.pin_checksums(&mut round, !apply_wb.is_empty());
        self.start_split_shards(&mut round)?;
        self.drop_merged_sources(&round, &mut done);
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
        self.destroy_removed(&round)?;
        self.start_snapshots(snapshots_to_send);
        self.pump_snapshots(&mut out)?;
        out.append(&mut self.pending_out);
        Ok(out)
    }
}

/// Wraps outgoing Raft messages in envelopes; `MsgSnapshot`s are held back for the snapshot
/// transfer.
pub(super) fn wrap(
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
