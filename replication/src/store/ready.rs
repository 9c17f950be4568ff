//! The ready round. Walk-through: every awake replica (and each sleeping one a message reached)
//! is visited once and its ready state split three ways:
//!
//! 1. **messages that need no persistence** (a leader's appends and heartbeats: Raft thesis
//!    §10.2.1) go out at once, through the caller's `send`, before this node's own fsync — the
//!    followers write while the leader does;
//! 2. **committed entries** (already persisted here: raft-rs hands out only those) are applied
//!    into an unsynced batch, written first, and their callbacks run at once: an acknowledged
//!    write waits for its own commit, never for the fsync of newer proposals. The apply state
//!    travels with the data it describes, and the log it replays from is already durable, so
//!    a crash replays exactly the unapplied suffix;
//! 3. **log appends, hard states and installed snapshots** of every replica go into one engine
//!    batch, handed to the log writer with the messages that must wait for it (a follower's
//!    acknowledgements, votes) and raft-rs told with `advance_append_async`; the loop does
//!    not wait for the sync (see `log_writer.rs`). A round that installs a snapshot, splits,
//!    merges or removes a replica first waits for the writes in flight and writes its own at
//!    once.
//!
//! Callbacks of served reads run last. Each apply returns what it did ([`Applied`]), gathered
//! per replica for the round: checksum pins are taken right after the batch that holds them,
//! then split-off shards start, merged-away sources are dropped and removed replicas destroyed.

use super::log_writer::{LogJob, PersistedReady};
use super::*;

impl<E: Engine> Store<E> {
    /// Handles the ready state of every replica, returning every message to send (see
    /// [`Store::process_ready_sending`], which sends the early ones before the fsync).
    pub fn process_ready(&mut self) -> Result<Vec<RaftEnvelope>> {
        let mut early = Vec::new();
        let mut rest = self.process_ready_sending(&mut |env| early.push(env))?;
        early.append(&mut rest);
        Ok(early)
    }

    /// Handles the ready state of every replica (see the module doc): messages that need no
    /// persistence go to `send` before this node's fsync; returns the rest. An error means
    /// the engine failed a write: the node must stop.
    pub fn process_ready_sending(&mut self, send: &mut dyn FnMut(RaftEnvelope)) -> Result<Vec<RaftEnvelope>> {
        // For the round-time metric only (never for decisions: those use `self.now`).
        let started = std::time::Instant::now();
        let mut out: Vec<RaftEnvelope> = Vec::new();
        let mut early: Vec<RaftEnvelope> = Vec::new();
        let mut done: Completions = Vec::new();
        let mut raft_wb = WriteBatch::new();
        // Committed entries of this round's readies: written (unsynced) before the log's sync.
        let mut committed_wb = WriteBatch::new();
        // Part of this round's committed batch was written early (before a snapshot install).
        let mut committed_written = false;
        let mut sync = false;
        // The readies this round's log batch persists, and the messages that wait for it.
        let mut readies: Vec<PersistedReady> = Vec::new();
        let mut after_persist: Vec<RaftEnvelope> = Vec::new();
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
            peer.start_round();
            peer.withdraw_lapsed_lease(self.now);
            peer.issue_reads(self.now);
            if !peer.pending_apply.is_empty() {
                // Entries waiting behind a CommitMerge, or left behind a ComputeChecksum: retry
                // them; take no new ready until they are through (this bounds what waits), nor
                // while a ComputeChecksum among them waits for its batch to be written.
                let applied = peer.apply(Vec::new(), &self.frozen, &mut committed_wb, &mut done)?;
                merged_now.extend(applied.merged_sources.iter().copied());
                let pin_waits = applied.checksum_at.is_some();
                round.entry(*shard_id).or_default().absorb(applied);
                peer.report_applied();
                if !peer.pending_apply.is_empty() || pin_waits {
                    continue;
                }
            }
            if !peer.raw.has_ready() {
                continue;
            }
            let mut rd = peer.raw.ready();
            let desc = peer.descriptor().clone();
            let fresh = fresh_replicas(peer);
            wrap(node_id, *shard_id, &desc, &fresh, rd.take_messages(), &mut early, &mut snapshots_to_send);
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
                // What this round applied so far (entries that waited) goes in first: the
                // snapshot must replace it, not be overwritten by it at the round's end.
                if !committed_wb.is_empty() {
                    self.engine.write(&committed_wb, WriteOptions::NO_SYNC)?;
                    committed_wb = WriteBatch::new();
                    committed_written = true;
                }
                // Marked first, so that a crash between the data and the metadata is
                // finished at the next open (`recover.rs`).
                let mut mark = WriteBatch::new();
                mark.put(Cf::Meta, keys::pending_snapshot_key(*shard_id), wire::encode(&snap));
                self.engine.write(&mark, WriteOptions::SYNC)?;
                fail::fail_point!("snapshot_before_install");
                snapshot::install(&self.engine, *shard_id, &desc.range()?)?;
                fail::fail_point!("snapshot_after_install");
                // The snapshot's request records replace this replica's, in the engine before
                // anything applies after the snapshot.
                peer.forget_known_records();
                let mut records_wb = WriteBatch::new();
                crate::dedup::clear(&mut records_wb, *shard_id);
                crate::dedup::write_all(&mut records_wb, *shard_id, &data.requests);
                self.engine.write(&records_wb, WriteOptions::NO_SYNC)?;
                peer.raw.mut_store().apply_snapshot_metadata(&snap, desc, &mut raft_wb);
                raft_wb.delete(Cf::Meta, keys::pending_snapshot_key(*shard_id));
                tracing::info!(
                    node = node_id,
                    shard = shard_id,
                    index = snap.get_metadata().index,
                    "snapshot installed"
                );
                sync = true;
            }
            peer.on_read_states(rd.take_read_states(), self.config.lease());
            let applied = peer.apply(rd.take_committed_entries(), &self.frozen, &mut committed_wb, &mut done)?;
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
            wrap(
                node_id,
                *shard_id,
                &desc,
                &fresh,
                rd.take_persisted_messages(),
                &mut after_persist,
                &mut snapshots_to_send,
            );
            readies.push(PersistedReady {
                shard_id: *shard_id,
                number: rd.number(),
                last_entry: rd.entries().last().map(|e| (e.index, e.term)),
            });
            // The entries stay readable from the entry cache until the batch is durable; the
            // log writer reports it (`on_persist_ready`).
            peer.raw.advance_append_async(rd);
            // Entries waiting behind a CommitMerge or a ComputeChecksum are not applied: tell
            // Raft what is.
            peer.report_applied();
            let applied = peer.raw.store().applied_index();
            let first = peer.raw.store().first_log_index();
            if applied.saturating_sub(first) > self.config.log_gc_threshold_entries {
                peer.raw.mut_store().compact_to(applied, &mut committed_wb)?;
            }
        }
        let installed_is_empty = installed.is_empty();
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
        // A round that changes which replicas exist or their metadata waits for the log
        // writes in flight and writes its own at once (see `log_writer.rs`).
        let structural = !installed_is_empty
            || !self.condemned.is_empty()
            || round.values().any(|a| !a.split_created.is_empty() || !a.merged_sources.is_empty() || a.removed);
        if structural {
            out.extend(self.flush_log_writes()?);
        }
        for env in early {
            send(env);
        }
        if !committed_wb.is_empty() {
            self.engine.write(&committed_wb, WriteOptions::NO_SYNC)?;
        }
        fail_after_apply_write(&round);
        self.pin_checksums(&mut round, committed_written || !committed_wb.is_empty());
        for f in done.drain(..) {
            f();
        }
        if !readies.is_empty() || !raft_wb.is_empty() {
            let job = LogJob { batch: raft_wb, sync, readies, messages: after_persist };
            out.extend(self.submit_log_job(job)?);
            if structural {
                out.extend(self.flush_log_writes()?);
            }
        }
        self.start_split_shards(&mut round)?;
        self.drop_merged_sources(&round, &mut done)?;
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
                self.replica_reads_served += peer.serve_reads(self.now, self.read_pool.as_ref(), &mut done);
                peer.publish_lease(self.now);
                peer.publish_leader_hint();
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
        // A leader back from a stuck disk call whose term was fenced meanwhile (its stand-in
        // was behind, or the message lost) hands its leadership on: no lease of that term
        // holds again (`crate::lease`).
        let fenced: Vec<u64> =
            visit.iter().filter(|id| self.peers.get(id).is_some_and(Peer::leads_fenced_term)).copied().collect();
        if !fenced.is_empty() {
            self.hand_on(&fenced);
        }
        self.destroy_removed(&round)?;
        self.start_snapshots(snapshots_to_send);
        self.pump_snapshots(&mut out)?;
        out.append(&mut self.pending_out);
        if !round.is_empty() {
            crate::metrics::observe_round(started.elapsed());
        }
        Ok(out)
    }
}

/// Failpoints at the boundary after a round's applied batch is written and before the store
/// acts on it (starts split shards, drops merged sources, destroys a removed replica) or its
/// log job lands: `apply_split_written`, `apply_merge_written`, `apply_conf_change_written`.
fn fail_after_apply_write<E: Engine>(round: &BTreeMap<u64, Applied<E>>) {
    if round.values().any(|a| !a.split_created.is_empty()) {
        fail::fail_point!("apply_split_written");
    }
    if round.values().any(|a| a.merged) {
        fail::fail_point!("apply_merge_written");
    }
    if round.values().any(|a| a.conf_changed) {
        fail::fail_point!("apply_conf_change_written");
    }
}

/// Wraps outgoing Raft messages in envelopes; `MsgSnapshot`s are held back for the snapshot
/// transfer. Every envelope carries the shard's epoch; the descriptor goes only where the
/// receiver may need it to create its replica: on heartbeats, and on appends to the replicas
/// in `fresh` (those this leader has not heard from yet).
pub(super) fn wrap(
    node_id: u64,
    shard_id: u64,
    desc: &ShardDescriptor,
    fresh: &[u64],
    msgs: Vec<Message>,
    out: &mut Vec<RaftEnvelope>,
    snapshots: &mut Vec<(u64, Message)>,
) {
    for m in msgs {
        let carry = match m.get_msg_type() {
            MessageType::MsgSnapshot => {
                snapshots.push((shard_id, m));
                continue;
            }
            MessageType::MsgHeartbeat => true,
            MessageType::MsgAppend => fresh.contains(&m.to),
            _ => false,
        };
        out.push(RaftEnvelope {
            shard_id,
            from_node: node_id,
            to_node: m.to,
            descriptor: carry.then(|| desc.clone()),
            epoch: Some(desc.epoch()),
            message: Some(m),
            ..RaftEnvelope::default()
        });
    }
}

/// On a leader, the replicas it has not heard from yet (nothing known to match): they may not
/// have their replica yet, so its appends to them carry the descriptor.
pub(super) fn fresh_replicas<E: Engine>(peer: &Peer<E>) -> Vec<u64> {
    if !peer.is_leader() {
        return Vec::new();
    }
    peer.raw.raft.prs().iter().filter(|(_, pr)| pr.matched == 0).map(|(id, _)| *id).collect()
}
