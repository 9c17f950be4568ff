//! Applying committed entries. Walk-through: the store hands a replica its committed entries;
//! each is decoded and checked again (epoch, range, frozen state) identically on every replica;
//! a command's conditions are decided against the state before it, then its writes go into the
//! round's batch; admin entries and conf changes go to their own modules; a `CommitMerge` whose
//! local source has not frozen yet waits in `pending_apply`; the proposal callbacks of the
//! applied indexes get their outcome once the batch is written. A command with a request id
//! is first looked up in the shard's request records (`crate::dedup`): a retry of one applied
//! already answers `Ok` and writes nothing. What an apply did beyond its
//! batch (shards a split created, sources merged away, a checksum to pin, this replica's
//! removal) comes back as [`Applied`], for the store to act on once the batch is written.

use super::*;
use crate::dedup::{self, Seen};

/// What one [`Peer::apply`] did besides writing into its batch; the store acts on it once
/// that batch is written.
pub(crate) struct Applied<E: Engine> {
    /// Replicas of the shards splits created (their initial state is in the batch).
    pub(crate) split_created: Vec<PeerStorage<E>>,
    /// Sources a `CommitMerge` took over (their metadata is destroyed in the batch).
    pub(crate) merged_sources: Vec<u64>,
    /// A `ComputeChecksum` took effect at this index over this range: apply stopped right
    /// after it, so the engine holds the shard's data exactly as of it once the batch is written.
    pub(crate) checksum_at: Option<(u64, KeyRange)>,
    /// A membership change without this node applied: the replica must be destroyed.
    pub(crate) removed: bool,
    /// A membership change applied (for the failpoint after its batch is written).
    pub(crate) conf_changed: bool,
    /// A `CommitMerge` applied (for the failpoint after its batch is written; `merged_sources`
    /// also lists replicas a snapshot superseded).
    pub(crate) merged: bool,
}

impl<E: Engine> Default for Applied<E> {
    fn default() -> Self {
        Applied {
            split_created: Vec::new(),
            merged_sources: Vec::new(),
            checksum_at: None,
            removed: false,
            conf_changed: false,
            merged: false,
        }
    }
}

impl<E: Engine> Applied<E> {
    /// Adds a later apply's effects (of the same replica, in the same round).
    pub(crate) fn absorb(&mut self, later: Applied<E>) {
        debug_assert!(self.checksum_at.is_none(), "nothing applies after a ComputeChecksum before its pin");
        self.split_created.extend(later.split_created);
        self.merged_sources.extend(later.merged_sources);
        self.checksum_at = later.checksum_at;
        self.removed |= later.removed;
        self.conf_changed |= later.conf_changed;
        self.merged |= later.merged;
    }
}

impl<E: Engine> Peer<E> {
    /// Is a `PrepareMerge` in the log past the applied index?
    pub(super) fn has_unapplied_prepare_merge(&self) -> bool {
        let log = &self.raw.raft.raft_log;
        let Ok(entries) = log.entries(log.applied + 1, None, raft::GetEntriesContext::empty(false)) else {
            return true; // cannot tell: be safe
        };
        entries.iter().any(|e| {
            e.get_entry_type() == EntryType::EntryNormal
                && !e.data.is_empty()
                && wire::decode::<EntryCommand>("command", &e.data).map_or(true, |c| c.prepare_merge.is_some())
        })
    }

    /// Must `cmd` wait? A `CommitMerge` that would take effect waits until this node's
    /// source replica applied the `PrepareMerge`: its descriptor then equals the frozen one
    /// the command carries (`frozen` holds this node's frozen replicas' descriptors).
    pub(super) fn must_wait(&self, cmd: &EntryCommand, frozen: &BTreeMap<u64, ShardDescriptor>) -> bool {
        let Some(source) = cmd.commit_merge.as_ref().and_then(|c| c.source.as_ref()) else { return false };
        let epoch = cmd.epoch.unwrap_or_default();
        self.check_admin(epoch, &AdminEntry::CommitMerge(source.clone())).is_ok()
            && frozen.get(&source.id) != Some(source)
    }

    /// Applies committed entries into `wb` (after any that waited); callbacks go to `done`.
    /// Stops before a `CommitMerge` that must wait (see [`Peer::must_wait`]), and right after
    /// a `ComputeChecksum` that took effect, and keeps the rest in `pending_apply`: the store
    /// pins the engine once `wb` is written, when it holds this shard's data exactly as of
    /// that entry ([`Applied::checksum_at`]), before anything later applies. The caller must
    /// not call it again for this replica before that pin.
    pub(crate) fn apply(
        &mut self,
        entries: Vec<Entry>,
        frozen: &BTreeMap<u64, ShardDescriptor>,
        wb: &mut WriteBatch,
        done: &mut Completions,
    ) -> Result<Applied<E>> {
        let mut applied = Applied::default();
        self.pending_apply.extend(entries);
        while let Some(entry) = self.pending_apply.pop_front() {
            let (index, term) = (entry.index, entry.term);
            let outcome = match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => Ok(()), // a new leader's no-op
                EntryType::EntryNormal => {
                    let cmd: EntryCommand = wire::decode("command", &entry.data)?;
                    if self.must_wait(&cmd, frozen) {
                        self.pending_apply.push_front(entry);
                        break;
                    }
                    if cmd.compute_checksum {
                        self.apply_compute_checksum(cmd.epoch.unwrap_or_default(), index, &mut applied)
                    } else {
                        // An `Err` here is the node's (its engine failed while deciding a
                        // condition): stop rather than let this replica decide differently.
                        self.apply_command(cmd, wb, &mut applied)?
                    }
                }
                EntryType::EntryConfChange => {
                    let cc = ConfChange::decode(entry.data.as_slice())
                        .map_err(|e| Error::Corrupt { what: "conf change", reason: e.to_string() })?;
                    // We only propose v2; a v1 change (one step) converts directly.
                    let single = ConfChangeSingle { change_type: cc.change_type, node_id: cc.node_id };
                    let v2 = ConfChangeV2 { transition: 0, changes: vec![single], context: cc.context };
                    self.apply_conf_change(&v2, wb, &mut applied)
                }
                EntryType::EntryConfChangeV2 => {
                    let cc = ConfChangeV2::decode(entry.data.as_slice())
                        .map_err(|e| Error::Corrupt { what: "conf change", reason: e.to_string() })?;
                    self.apply_conf_change(&cc, wb, &mut applied)
                }
            };
            self.raw.mut_store().set_applied(index, term, wb);
            self.complete_proposals(index, term, outcome, done);
            if applied.checksum_at.is_some() {
                break;
            }
        }
        Ok(applied)
    }

    pub(super) fn complete_proposals(&mut self, index: u64, term: u64, outcome: Result<()>, done: &mut Completions) {
        let shard_id = self.shard_id();
        let mut outcome = Some(outcome);
        while self.proposals.front().is_some_and(|p| p.index <= index) {
            let Some(p) = self.proposals.pop_front() else { break };
            let result = if p.index == index && p.term == term {
                crate::metrics::observe_commit(p.proposed_at.elapsed());
                outcome.take().unwrap_or(Ok(()))
            } else {
                // Another leader's entry took this index: the proposal never committed.
                Err(Error::ProposalDropped { shard_id, reason: "overwritten by a new leader" })
            };
            match p.cb {
                // Entered the joint configuration: answer once it is left.
                ProposalCallback::AfterJoint(cb) if result.is_ok() && self.in_joint() => self.joint_waiters.push(cb),
                cb => done.push(Box::new(move || cb.run(p.index, result))),
            }
        }
        if !self.joint_waiters.is_empty() && !self.in_joint() {
            for cb in self.joint_waiters.drain(..) {
                done.push(Box::new(move || cb(Ok(()))));
            }
        }
    }

    /// Applies one command: every replica makes the same epoch and range checks at the same
    /// log position, so all agree whether it takes effect.
    ///
    /// The outer `Result` is the node's: an engine read failing while a condition is decided
    /// (the node must stop). The inner one is the command's outcome, the same on every
    /// replica.
    pub(super) fn apply_command(
        &mut self,
        cmd: EntryCommand,
        wb: &mut WriteBatch,
        applied: &mut Applied<E>,
    ) -> Result<Result<()>> {
        let epoch = cmd.epoch.unwrap_or_default();
        if let Some(split) = cmd.split {
            return self.apply_split(epoch, split, cmd.now_ms, wb, applied);
        }
        if let Some(target) = cmd.prepare_merge.and_then(|p| p.target) {
            return Ok(self.apply_prepare_merge(epoch, target, wb));
        }
        if let Some(source) = cmd.commit_merge.and_then(|c| c.source) {
            return self.apply_commit_merge(epoch, source, cmd.now_ms, wb, applied);
        }
        if cmd.rollback_merge {
            if let Err(e) = self.check_admin(epoch, &AdminEntry::RollbackMerge) {
                return Ok(Err(e));
            }
            let mut desc = self.descriptor().clone();
            desc.merging_into = None;
            desc.epoch = Some(Epoch { version: epoch.version + 1, ..desc.epoch() });
            tracing::info!(shard = desc.id, "merge rolled back");
            self.raw.mut_store().set_descriptor(desc, wb);
            return Ok(Ok(()));
        }
        if let Err(e) = self.check_epoch(epoch, cmd.ops.iter().flat_map(op_keys)) {
            return Ok(Err(e));
        }
        let shard = match self.descriptor().range() {
            Ok(r) => r,
            Err(e) => return Ok(Err(e.into())),
        };
        self.clock_floor_ms.fetch_max(cmd.now_ms, std::sync::atomic::Ordering::Relaxed);
        let engine = self.raw.store().engine().clone();
        if let Some(id) = cmd.request_id {
            let shard_id = self.shard_id();
            match dedup::look_up(&engine, &mut self.known_records, shard_id, id, cmd.now_ms)? {
                Seen::New => {}
                Seen::Applied => return Ok(Ok(())),
                Seen::Failed => {
                    let why =
                        format!("request {} of client {:x}: its condition failed; not applied", id.seq, id.client);
                    return Ok(Err(Error::Invalid(why)));
                }
                Seen::Superseded { last_seq } => return Ok(Err(dedup::superseded(self.shard_id(), id, last_seq))),
            }
        }
        // Every condition first, against the state before this command. A value that does
        // not decode is the same bytes on every replica: the command fails alike everywhere.
        for op in &cmd.ops {
            if let Some(op::Kind::Check(c)) = &op.kind {
                let current = match current_stored(&engine, wb, &c.key)? {
                    None => None,
                    Some(stored) => match value::live_with_deadline(&c.key, stored, cmd.now_ms) {
                        Ok(v) => v,
                        Err(e) => return Ok(Err(e)),
                    },
                };
                if !check_holds(c, current.as_ref().map(|(v, d)| (v.as_slice(), *d))) {
                    let current = current.map(|(v, _)| v);
                    let (shard_id, key) = (self.shard_id(), c.key.clone());
                    if let Some(id) = cmd.request_id {
                        // Final: an attempt still in flight must not apply later.
                        dedup::record(wb, &mut self.known_records, shard_id, id, cmd.now_ms, true);
                    }
                    return Ok(Err(Error::ConditionFailed { shard_id, key, current }));
                }
            }
        }
        for op in cmd.ops {
            match op.kind {
                Some(op::Kind::Put(p)) => {
                    if p.deadline_ms.is_some() {
                        self.sweep.expiring = true;
                        self.sweep.seen_this_pass = true;
                    }
                    wb.put(Cf::Data, p.key, value::encode(&p.value, p.deadline_ms));
                }
                Some(op::Kind::Delete(d)) => {
                    wb.delete(Cf::Data, d.key);
                }
                Some(op::Kind::DeleteExpired(d)) => {
                    let stored = current_stored(&engine, wb, &d.key)?;
                    // An undecodable value is left alone (the same on every replica).
                    let expired = stored
                        .as_deref()
                        .and_then(|bytes| value::decode(&d.key, bytes).ok())
                        .is_some_and(|v| !v.live_at(cmd.now_ms));
                    if expired {
                        wb.delete(Cf::Data, d.key);
                    }
                }
                Some(op::Kind::Check(_)) => {}
                Some(op::Kind::ForgetRequest(r)) => {
                    let shard_id = self.shard_id();
                    dedup::forget(&engine, wb, &mut self.known_records, shard_id, r, cmd.now_ms)?;
                }
                Some(op::Kind::DeleteRange(d)) => {
                    // Clip to the shard: a range delete never reaches a neighbour's keys.
                    if let Ok(r) = KeyRange::new(d.start, min_end(d.end.as_deref(), shard.end())) {
                        wb.delete_range(Cf::Data, r);
                    }
                }
                None => {}
            }
        }
        if let Some(id) = cmd.request_id {
            let shard_id = self.shard_id();
            dedup::record(wb, &mut self.known_records, shard_id, id, cmd.now_ms, false);
        }
        Ok(Ok(()))
    }
}

/// The stored bytes of `key` as of the writes already in `wb` (earlier commands of this apply
/// round) over the engine.
pub(super) fn current_stored<R: Reader>(engine: &R, wb: &WriteBatch, key: &[u8]) -> Result<Option<Vec<u8>>> {
    for op in wb.ops().iter().rev() {
        match op {
            WriteOp::Put { cf: Cf::Data, key: k, value } if k.as_slice() == key => return Ok(Some(value.clone())),
            WriteOp::Delete { cf: Cf::Data, key: k } if k.as_slice() == key => return Ok(None),
            WriteOp::DeleteRange { cf: Cf::Data, range } if range.contains(key) => return Ok(None),
            _ => {}
        }
    }
    Ok(engine.get(Cf::Data, key)?)
}

/// Does `check` hold for the live value and deadline `current`?
pub(super) fn check_holds(check: &crate::wire::Check, current: Option<(&[u8], Option<u64>)>) -> bool {
    match Expect::from_i32(check.expect) {
        Some(Expect::Absent) => current.is_none(),
        Some(Expect::Present) => current.is_some(),
        Some(Expect::Equals) => current.is_some_and(|(v, _)| v == check.value.as_slice()),
        Some(Expect::Exactly) => current == Some((check.value.as_slice(), check.deadline_ms)),
        None => false, // an unknown expectation never holds
    }
}
