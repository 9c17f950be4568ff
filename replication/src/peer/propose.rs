//! Proposing: writes, admin entries (split, merge steps, checksum rounds) and membership
//! changes. Walk-through: a proposal is checked against the replica's epoch and state (leader,
//! not frozen, keys inside the range, the admin entry valid here); it is appended to the Raft
//! log with a callback remembered by (index, term); the store's ready round replicates and
//! commits it; `apply` runs it and the callback gets the outcome. A membership change is one
//! joint-consensus `ConfChangeV2` at a time; `swap_replicas` exchanges a learner and a voter in
//! one.

use super::*;

impl<E: Engine> Peer<E> {
    /// Proposes a write; `cb` runs once it is applied here or failed. A write with a
    /// `request_id` applies at most once however often it is proposed (see `crate::dedup`).
    pub fn propose(&mut self, epoch: Epoch, ops: Vec<Op>, request_id: Option<RequestId>, cb: WriteCallback) {
        if !self.is_leader() {
            return cb(Err(self.not_leader()));
        }
        if let Err(e) = self.check_epoch(epoch, ops.iter().flat_map(op_keys)) {
            return cb(Err(e));
        }
        let too_large = ops.iter().find_map(|op| match &op.kind {
            Some(op::Kind::Put(p)) if p.value.len() > value::MAX_USER_VALUE_BYTES => Some(p.value.len()),
            _ => None,
        });
        if let Some(len) = too_large {
            let max = value::MAX_USER_VALUE_BYTES;
            return cb(Err(Error::Invalid(format!("a value of {len} bytes is over the {max}-byte limit"))));
        }
        let cmd = EntryCommand {
            shard_id: self.shard_id(),
            epoch: Some(epoch),
            ops,
            now_ms: self.now_ms(),
            request_id,
            ..EntryCommand::default()
        };
        self.propose_command(cmd, ProposalCallback::Write(cb));
    }

    /// Proposes an admin command routed with `epoch`; `cb` runs once it is applied here.
    pub fn propose_admin(&mut self, epoch: Epoch, admin: AdminEntry, cb: WriteCallback) {
        self.propose_admin_with(epoch, admin, ProposalCallback::Write(cb));
    }

    /// Proposes a `ComputeChecksum` routed with `epoch`; `cb` gets its log index once it is
    /// applied here (by then the store pinned this replica's data at that index).
    pub fn propose_checksum(&mut self, epoch: Epoch, cb: IndexCallback) {
        self.propose_admin_with(epoch, AdminEntry::ComputeChecksum, ProposalCallback::AtIndex(cb));
    }

    pub(super) fn propose_admin_with(&mut self, epoch: Epoch, admin: AdminEntry, cb: ProposalCallback) {
        if !self.is_leader() {
            return cb.fail(self.not_leader());
        }
        if let Err(e) = self.check_admin(epoch, &admin) {
            return cb.fail(e);
        }
        if matches!(admin, AdminEntry::PrepareMerge(_)) && self.raw.raft.has_pending_conf() {
            let e = Error::Config(format!("shard {}: cannot merge during a membership change", self.shard_id()));
            return cb.fail(e);
        }
        let now_ms = self.now_ms();
        let mut cmd = EntryCommand { shard_id: self.shard_id(), epoch: Some(epoch), now_ms, ..EntryCommand::default() };
        match admin {
            AdminEntry::Split(split) => cmd.split = Some(split),
            AdminEntry::PrepareMerge(target) => cmd.prepare_merge = Some(PrepareMerge { target: Some(target) }),
            AdminEntry::CommitMerge(source) => cmd.commit_merge = Some(CommitMerge { source: Some(source) }),
            AdminEntry::RollbackMerge => cmd.rollback_merge = true,
            AdminEntry::ComputeChecksum => cmd.compute_checksum = true,
        }
        self.propose_command(cmd, cb);
    }

    /// Checks an admin command against this replica's state; the same checks run at propose
    /// and, on every replica, at apply.
    pub(super) fn check_admin(&self, epoch: Epoch, admin: &AdminEntry) -> Result<()> {
        let desc = self.descriptor();
        let bad = |reason: String| Err(Error::Config(format!("shard {}: {reason}", desc.id)));
        match admin {
            AdminEntry::Split(split) => self.check_split(epoch, split),
            AdminEntry::PrepareMerge(target) => {
                self.check_epoch(epoch, std::iter::empty())?;
                if target.id == desc.id || target.merging_into.is_some() {
                    return bad(format!("cannot merge into shard {}", target.id));
                }
                if !left_of(target, desc) {
                    return bad(format!("shard {} is not this shard's left neighbour", target.id));
                }
                if !same_voters_only(desc, target) {
                    return bad(format!("shard {} has other replicas (or learners)", target.id));
                }
                Ok(())
            }
            AdminEntry::CommitMerge(source) => {
                if epoch != desc.epoch() {
                    return Err(self.epoch_error());
                }
                self.check_epoch(epoch, std::iter::empty())?;
                if source.merging_into != Some(desc.id) {
                    return bad(format!("shard {} is not frozen to merge into this one", source.id));
                }
                if !left_of(desc, source) || !same_voters_only(desc, source) {
                    return bad(format!(
                        "shard {} is not this shard's right neighbour with the same voters",
                        source.id
                    ));
                }
                Ok(())
            }
            AdminEntry::RollbackMerge => {
                if desc.merging_into.is_none() || epoch.version != desc.epoch().version {
                    return Err(self.epoch_error());
                }
                Ok(())
            }
            // The range must be the one the caller routed with, and a frozen shard's data
            // belongs to its merge.
            AdminEntry::ComputeChecksum => self.check_epoch(epoch, std::iter::empty()),
        }
    }

    /// A split is valid when routed with the current epoch, its key lies strictly inside the
    /// shard and the new id differs from this shard's.
    pub(super) fn check_split(&self, epoch: Epoch, split: &Split) -> Result<()> {
        self.check_epoch(epoch, std::iter::once(split.split_key.as_slice()))?;
        let desc = self.descriptor();
        let bad = |reason: &str| Err(Error::Config(format!("shard {}: cannot split: {reason}", desc.id)));
        if split.split_key == desc.start {
            return bad("the split key is the shard's first key");
        }
        if split.split_key.len() > presage_engine::MAX_KEY_BYTES {
            return bad("the split key is too long");
        }
        if split.new_shard_id == desc.id {
            return bad("the new shard needs another id");
        }
        if !self.raw.raft.prs().conf().to_conf_state().voters_outgoing.is_empty() {
            // The new shard copies the replicas: it must not start in a joint configuration.
            return bad("a membership change is in progress");
        }
        Ok(())
    }

    pub(super) fn propose_command(&mut self, cmd: EntryCommand, cb: ProposalCallback) {
        let before = self.raw.raft.raft_log.last_index();
        if let Err(e) = self.raw.propose(Vec::new(), wire::encode(&cmd)) {
            let reason = match e {
                raft::Error::ProposalDropped => "dropped by raft (leader changing or too much uncommitted data)",
                _ => "refused by raft",
            };
            return cb.fail(Error::ProposalDropped { shard_id: self.shard_id(), reason });
        }
        let index = self.raw.raft.raft_log.last_index();
        debug_assert_eq!(index, before + 1, "one proposal, one entry");
        self.proposals.push_back(Proposal {
            index,
            term: self.raw.raft.term,
            cb,
            proposed_at: std::time::Instant::now(),
        });
    }

    /// Proposes a membership change (joint consensus when it has several steps).
    pub fn propose_conf_change(&mut self, cc: ConfChangeV2, cb: WriteCallback) {
        self.propose_conf_change_with(cc, ProposalCallback::Write(cb));
    }

    pub(super) fn propose_conf_change_with(&mut self, cc: ConfChangeV2, cb: ProposalCallback) {
        if !self.is_leader() {
            return cb.fail(self.not_leader());
        }
        if self.descriptor().merging_into.is_some() || self.has_unapplied_prepare_merge() {
            // The merge target checks the source's replicas as frozen: they must stay.
            let e = Error::Config(format!("shard {}: no membership change while merging", self.shard_id()));
            return cb.fail(e);
        }
        if let Err(e) = self.raw.propose_conf_change(Vec::new(), cc) {
            return cb.fail(Error::Raft(e.to_string()));
        }
        let index = self.raw.raft.raft_log.last_index();
        self.proposals.push_back(Proposal {
            index,
            term: self.raw.raft.term,
            cb,
            proposed_at: std::time::Instant::now(),
        });
    }

    /// Swaps a learner and a voter in one joint-consensus change (Raft §6, thesis §4.3): the
    /// learner on `promote` becomes a voter and the voter on `demote` a learner atomically,
    /// `[AddNode(promote), AddLearnerNode(demote)]` with an automatic leave. `cb` runs once
    /// this leader applied the leave, i.e. the swap is complete here. Refused unless
    /// `promote` is a learner and `demote` a voter other than this leader (hand leadership
    /// away first), and while another membership change is still in flight (raft-rs would
    /// turn the proposal into a no-op).
    pub fn swap_replicas(&mut self, promote: u64, demote: u64, cb: WriteCallback) {
        if !self.is_leader() {
            return cb(Err(self.not_leader()));
        }
        let shard_id = self.shard_id();
        let refuse = |reason: &str| Error::SwapRefused { shard_id, promote, demote, reason: reason.to_string() };
        let role = |node: u64| self.descriptor().replicas.iter().find(|r| r.node_id == node).map(Replica::is_voter);
        let refusal = if promote == demote {
            Some(refuse("promote and demote are the same node"))
        } else if role(promote) != Some(false) {
            Some(refuse("promote is not a learner of the shard"))
        } else if role(demote) != Some(true) {
            Some(refuse("demote is not a voter of the shard"))
        } else if demote == self.node_id {
            Some(refuse("demote is this leader; transfer the leadership first"))
        } else if self.raw.raft.has_pending_conf() || self.in_joint() {
            Some(refuse("another membership change is still in progress"))
        } else {
            None
        };
        if let Some(e) = refusal {
            return cb(Err(e));
        }
        let change = |t: ConfChangeType, node_id: u64| ConfChangeSingle { change_type: t as i32, node_id };
        let cc = ConfChangeV2 {
            transition: ConfChangeTransition::Auto as i32,
            changes: vec![change(ConfChangeType::AddNode, promote), change(ConfChangeType::AddLearnerNode, demote)],
            context: Vec::new(),
        };
        self.propose_conf_change_with(cc, ProposalCallback::AfterJoint(cb));
    }

    /// Is this replica's configuration joint (an outgoing voter set exists)?
    pub(super) fn in_joint(&self) -> bool {
        !self.raw.raft.prs().conf().to_conf_state().voters_outgoing.is_empty()
    }
}
