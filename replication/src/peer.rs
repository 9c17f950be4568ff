//! `Peer`: one shard replica - a raft-rs `RawNode` on a [`PeerStorage`], the proposals and
//! reads waiting on it, and the apply of committed entries into the engine.
//!
//! `Peer`, one replica: proposals (index, term, callback), ReadIndex reads (issued only once the
//! leader committed in its term, served when applied, expired after two election timeouts), apply
//! of commands (epoch and range re-checked at apply, identically on every replica), of conf changes
//! (descriptor `conf_ver` bump), of splits (left part kept, the right part's initial Raft state
//! written in the same batch, both at `version` + 1) and of merge steps (`AdminEntry`:
//! `PrepareMerge` freezes, `CommitMerge` extends the target and destroys the source's metadata in
//! the same batch, `RollbackMerge` unfreezes). A `CommitMerge` whose local source has not frozen
//! yet waits in `pending_apply`; the store takes no new ready from that replica meanwhile.
//! `ComputeChecksum` (admin, refused at a stale version or frozen) changes no data: on every
//! replica, learners included, apply stops right after it (`checksum_pending`, the rest in
//! `pending_apply`) so that the store pins the engine at exactly that index. Conf changes: the
//! descriptor lists voters of both halves of a joint configuration as voters (a demoted voter shows
//! as a learner once the joint state is left), then learners, by node id; every conf change entry,
//! the automatic leave included, bumps `conf_ver`. `swap_replicas` proposes `[AddNode(promote),
//! AddLearnerNode(demote)]` (auto-leave) and answers once the leader applied the leave; refused
//! (`SwapRefused`) unless `promote` is a learner and `demote` a voter other than the leader, and
//! while a membership change is in flight (raft-rs would make it a no-op). `EpochNotMatch` carries
//! the replica's descriptor and the last shards split off it. Read leases: see the crate doc.
//! Conditional writes: every `Check` of a command is decided before any of its writes, against the
//! state before the command, i.e. the engine overlaid with the writes already in the apply round's
//! batch (earlier commands), at the command's `now_ms`; a failed check fails the whole command
//! alike on every replica (`ConditionFailed` with the current value). The expiry sweep: the leader
//! walks its shard a page every `SWEEP_EVERY_TICKS` while it may hold expiring values, one proposal
//! of `DeleteExpired` (re-checked at apply) in flight.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use presage_engine::{Cf, Engine, KeyRange, Reader, ScanLimit, ScanOrder, WriteBatch, WriteOp};
use prost::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, Entry, EntryType,
};
use raft::{RawNode, StateRole};

use crate::config::RaftConfig;
use crate::error::{Error, Result};
use crate::storage::PeerStorage;
use crate::value;
use crate::wire::{
    self, op, CommitMerge, EntryCommand, Epoch, Expect, Op, PrepareMerge, Replica, ShardDescriptor, Split,
};

/// Called with the outcome of a write once it is applied (or failed).
pub type WriteCallback = Box<dyn FnOnce(Result<()>) + Send>;
/// Called with the outcome of a read.
pub type ReadCallback = Box<dyn FnOnce(Result<ReadResponse>) + Send>;
/// Called with the log index of an applied proposal (or its failure).
pub type IndexCallback = Box<dyn FnOnce(Result<u64>) + Send>;

/// A read a client asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadRequest {
    /// One key.
    Get(Vec<u8>),
    /// Pairs of a range (clipped to the shard), ascending, bounded.
    Scan {
        /// The range.
        range: KeyRange,
        /// At most this many pairs.
        max_keys: usize,
        /// At most this many key+value bytes (at least one pair is returned).
        max_bytes: usize,
    },
}

/// The answer to a [`ReadRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadResponse {
    /// The value of the key, if any.
    Value(Option<Vec<u8>>),
    /// The pairs, and whether the shard holds more in the range.
    Pairs {
        /// Pairs in key order.
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
        /// More pairs follow in the range (within this shard).
        more: bool,
        /// With `more`: the last key the scan examined, live or expired; the next page starts
        /// after it (a page may end in expired values, or hold only those).
        resume_after: Option<Vec<u8>>,
    },
}

/// A command that changes a shard's range or epoch rather than its data.
#[derive(Debug, Clone, PartialEq)]
pub enum AdminEntry {
    /// Split at a key (see [`Split`]).
    Split(Split),
    /// Freeze this shard to merge it into the given adjacent shard (see [`PrepareMerge`]).
    PrepareMerge(ShardDescriptor),
    /// Take over the given frozen neighbour (see [`CommitMerge`]).
    CommitMerge(ShardDescriptor),
    /// Unfreeze this shard: its merge did not and will not commit.
    RollbackMerge,
    /// Pin every replica's data at this entry's index for a range checksum (see
    /// [`EntryCommand::compute_checksum`]); changes no data.
    ComputeChecksum,
}

struct Proposal {
    index: u64,
    term: u64,
    cb: ProposalCallback,
}

/// What to call once a proposal is applied.
enum ProposalCallback {
    /// With its outcome.
    Write(WriteCallback),
    /// With its log index, or the failure.
    AtIndex(IndexCallback),
    /// A membership change entering a joint configuration: with its outcome once the
    /// configuration has left the joint state here (see [`Peer::swap_replicas`]).
    AfterJoint(WriteCallback),
}

impl ProposalCallback {
    /// Runs the callback with the outcome of the entry at `index`.
    fn run(self, index: u64, outcome: Result<()>) {
        match self {
            ProposalCallback::Write(cb) | ProposalCallback::AfterJoint(cb) => cb(outcome),
            ProposalCallback::AtIndex(cb) => cb(outcome.map(|()| index)),
        }
    }

    /// Runs the callback with a failure (the proposal has no index).
    fn fail(self, e: Error) {
        self.run(0, Err(e));
    }
}

/// A replica's data pinned at a log index for a range checksum: an engine snapshot taken by
/// the store right after it wrote the batch holding the `ComputeChecksum` entry at `index`
/// (so the engine held the shard's data exactly as of `index`), and the shard's range then.
pub(crate) struct ChecksumPin<E: Engine> {
    /// The `ComputeChecksum` entry's index.
    pub(crate) index: u64,
    /// The shard's range at that index (a later split or merge does not move it).
    pub(crate) range: KeyRange,
    /// The engine as of `index`.
    pub(crate) snapshot: Arc<E::Snapshot>,
    /// When it was taken (the node's monotonic clock), for its expiry.
    pub(crate) taken_at: Instant,
}

struct PendingRead {
    id: u64,
    /// Handed to Raft (raft-rs drops read requests that reach a leader before it committed
    /// an entry of its own term, so they wait here until it has).
    issued: bool,
    /// Ticks since the read arrived.
    age_ticks: usize,
    /// When it was handed to Raft (the node's monotonic clock).
    issued_at: Instant,
    /// The read index once Raft confirmed leadership.
    index: Option<u64>,
    request: ReadRequest,
    cb: ReadCallback,
}

/// Callbacks to run once the apply batch is on disk.
pub(crate) type Completions = Vec<Box<dyn FnOnce() + Send>>;

/// One replica of one shard on this node.
pub struct Peer<E: Engine> {
    pub(crate) node_id: u64,
    pub(crate) raw: RawNode<PeerStorage<E>>,
    proposals: VecDeque<Proposal>,
    reads: VecDeque<PendingRead>,
    next_read_id: u64,
    /// Set when this replica was removed from the shard and must be destroyed.
    pub(crate) removed: bool,
    /// Quiescent: caught up and idle, so the store neither ticks it nor visits it in ready
    /// rounds until a message or request wakes it.
    pub(crate) quiescent: bool,
    /// Ticks since the last write, read, role change or new log entry.
    pub(crate) idle_ticks: u64,
    /// With lease reads: this leader may answer reads from its state until this instant
    /// (exclusive), in term `lease_term` (see [`Peer::read`]).
    lease_until: Option<Instant>,
    lease_term: u64,
    /// Shards this replica's splits created, in the batch being applied; the store starts
    /// them once the batch is written.
    pub(crate) split_created: Vec<PeerStorage<E>>,
    /// The latest shards split off this one, returned with `EpochNotMatch` so that a client
    /// can route without asking elsewhere (at most [`MAX_SPLIT_SIBLINGS`]).
    siblings: VecDeque<ShardDescriptor>,
    /// Committed entries not applied yet because a `CommitMerge` waits for this node's
    /// source replica; at most one ready's worth, since the store takes no new ready from a
    /// replica while this is not empty.
    pub(crate) pending_apply: VecDeque<Entry>,
    /// Source shards a `CommitMerge` in the batch being applied destroyed here; the store
    /// drops their replicas once the batch is written.
    pub(crate) merged_sources: Vec<u64>,
    /// The expiry sweep's state (see [`Peer::sweep_expired`]).
    sweep: Sweep,
    /// The latest expiry time this replica used (see [`Peer::now_ms`]).
    clock_floor_ms: u64,
    /// A `ComputeChecksum` entry applied into the batch being built, with the shard's range:
    /// apply stopped right after it, and the store pins the engine once that batch is written
    /// (see [`Peer::apply`]).
    pub(crate) checksum_pending: Option<(u64, KeyRange)>,
    /// The newest pinned checksum snapshot (dropped when a Raft snapshot is installed here, or
    /// after `CHECKSUM_PIN_MAX_AGE_SECS`).
    pub(crate) checksum_pin: Option<ChecksumPin<E>>,
    /// Swaps whose joint configuration this leader entered, waiting until it is left.
    joint_waiters: Vec<WriteCallback>,
}

/// Where the leader's sweep of expired values is. It walks the shard a page at a time and
/// stops walking once a whole pass found no value with a deadline and none was written
/// since; a replica starts out assuming there may be some.
#[derive(Debug)]
struct Sweep {
    /// Values with a deadline may be in the shard.
    expiring: bool,
    /// One was seen (or written) during the current pass.
    seen_this_pass: bool,
    /// The next page starts after this key; `None`: at the shard's start.
    resume_after: Option<Vec<u8>>,
    /// A sweep proposal is waiting to apply: no other is made meanwhile.
    in_flight: Arc<std::sync::atomic::AtomicBool>,
}

/// Bytes one sweep page may read.
pub const SWEEP_PAGE_BYTES: usize = 1 << 20;

/// Split-off shards a replica remembers for `EpochNotMatch` answers.
pub const MAX_SPLIT_SIBLINGS: usize = 4;

impl<E: Engine> Peer<E> {
    /// A replica over `storage`.
    pub fn new(node_id: u64, storage: PeerStorage<E>, config: &RaftConfig) -> Result<Self> {
        let shard_id = storage.shard_id();
        let mut rc = config.raft_config(node_id, storage.applied_index());
        if let Some(offset) = config.fixed_election_offset(node_id) {
            // Deterministic tests: every node gets its own fixed election timeout.
            rc.min_election_tick = config.election_ticks + offset;
            rc.max_election_tick = rc.min_election_tick + 1;
        }
        let raw = RawNode::new(&rc, storage, &crate::logger::raft_logger(node_id, shard_id))?;
        Ok(Peer {
            node_id,
            raw,
            proposals: VecDeque::new(),
            reads: VecDeque::new(),
            next_read_id: 1,
            removed: false,
            quiescent: false,
            idle_ticks: 0,
            lease_until: None,
            lease_term: 0,
            split_created: Vec::new(),
            siblings: VecDeque::new(),
            pending_apply: VecDeque::new(),
            merged_sources: Vec::new(),
            sweep: Sweep {
                expiring: true,
                seen_this_pass: false,
                resume_after: None,
                in_flight: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            },
            clock_floor_ms: 0,
            checksum_pending: None,
            checksum_pin: None,
            joint_waiters: Vec::new(),
        })
    }

    /// On the leader: reads the next `max_keys` keys of the sweep and proposes deleting those
    /// expired by the clock (each delete re-checks expiry at apply, so a value written since
    /// is kept). Does nothing when the shard holds no expiring values, or while the last
    /// sweep proposal is still in flight.
    pub(crate) fn sweep_expired(&mut self, max_keys: usize) -> Result<()> {
        if !self.is_leader()
            || !self.sweep.expiring
            || self.descriptor().merging_into.is_some()
            || self.sweep.in_flight.load(std::sync::atomic::Ordering::Acquire)
        {
            return Ok(());
        }
        let desc = self.descriptor().clone();
        let shard = desc.range()?;
        // Resume after the last key looked at, if it is still inside the shard (a split or
        // merge may have moved the bounds since).
        let range = match self.sweep.resume_after.take() {
            Some(k) if shard.contains(&k) => match shard.after(&k) {
                Some(r) => r,
                None => {
                    self.end_sweep_pass();
                    return Ok(());
                }
            },
            _ => shard,
        };
        let engine = self.raw.store().engine().clone();
        let page = engine.scan(Cf::Data, &range, ScanOrder::Forward, ScanLimit::new(max_keys, SWEEP_PAGE_BYTES))?;
        let now_ms = self.now_ms();
        let mut ops = Vec::new();
        for (k, stored) in &page.pairs {
            match value::decode(k, stored) {
                Ok(v) if v.deadline_ms.is_some() => {
                    self.sweep.seen_this_pass = true;
                    if !v.live_at(now_ms) {
                        ops.push(Op::delete_expired(k.clone()));
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(shard = desc.id, error = %e, "expiry sweep skips an undecodable value"),
            }
        }
        match (page.more, page.pairs.last()) {
            (true, Some((last, _))) => self.sweep.resume_after = Some(last.clone()),
            _ => self.end_sweep_pass(),
        }
        if !ops.is_empty() {
            let (shard_id, n) = (desc.id, ops.len());
            let in_flight = Arc::clone(&self.sweep.in_flight);
            in_flight.store(true, std::sync::atomic::Ordering::Release);
            self.propose(
                desc.epoch(),
                ops,
                Box::new(move |r| {
                    in_flight.store(false, std::sync::atomic::Ordering::Release);
                    match r {
                        Ok(()) => tracing::debug!(shard = shard_id, keys = n, "expired values swept"),
                        Err(e) => tracing::debug!(shard = shard_id, error = %e, "expiry sweep not applied; retried"),
                    }
                }),
            );
        }
        Ok(())
    }

    /// A sweep pass reached the shard's end: walk again only if it saw an expiring value.
    fn end_sweep_pass(&mut self) {
        self.sweep.resume_after = None;
        self.sweep.expiring = self.sweep.seen_this_pass;
        self.sweep.seen_this_pass = false;
    }

    /// The clock for expiry on this replica: the wall clock, never behind a time this replica
    /// already applied or read with, so a value seen expired stays expired across proposals
    /// and reads even if the wall clock steps back. (It is not persisted: after a restart,
    /// or under a new leader, it is only as good as the clocks' agreement.)
    pub(crate) fn now_ms(&mut self) -> u64 {
        self.clock_floor_ms = self.clock_floor_ms.max(value::wall_now_ms());
        self.clock_floor_ms
    }

    /// The shard id.
    pub fn shard_id(&self) -> u64 {
        self.raw.store().shard_id()
    }

    /// The shard as this replica knows it.
    pub fn descriptor(&self) -> &ShardDescriptor {
        self.raw.store().descriptor()
    }

    /// True while this replica leads its shard.
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The leader this replica knows of.
    pub fn leader(&self) -> Option<u64> {
        let l = self.raw.raft.leader_id;
        (l != raft::INVALID_ID).then_some(l)
    }

    /// Can this leader put its group to sleep? Only when nothing is in flight: every replica
    /// has the whole log, everything is committed and applied, and no read, proposal,
    /// membership change or leadership transfer waits.
    pub(crate) fn can_quiesce(&self) -> bool {
        let r = &self.raw.raft;
        let last = r.raft_log.last_index();
        r.state == StateRole::Leader
            && self.proposals.is_empty()
            && self.reads.is_empty()
            && self.joint_waiters.is_empty()
            && self.pending_apply.is_empty()
            && r.read_only.pending_read_count() == 0
            && r.lead_transferee.is_none()
            && r.raft_log.committed == last
            && self.raw.store().applied_index() == last
            && r.pending_conf_index <= last
            && r.prs().conf().to_conf_state().voters_outgoing.is_empty()
            && r.prs().iter().all(|(id, pr)| {
                *id == self.node_id
                    || (pr.matched == last && pr.state == raft::ProgressState::Replicate && pr.recent_active)
            })
    }

    /// Can this follower sleep, told so by `leader` at `term` with `commit`? Only with the
    /// leader's whole log.
    pub(crate) fn can_quiesce_as_follower(&self, leader: u64, term: u64, commit: u64) -> bool {
        let r = &self.raw.raft;
        r.state == StateRole::Follower
            && r.leader_id == leader
            && r.term == term
            && r.raft_log.last_index() == commit
            && r.raft_log.committed == commit
            && r.pending_request_snapshot == raft::INVALID_INDEX
    }

    /// Wakes a quiescent replica (a no-op for an awake one).
    pub(crate) fn wake(&mut self) {
        self.quiescent = false;
        self.idle_ticks = 0;
    }

    fn not_leader(&self) -> Error {
        Error::NotLeader { shard_id: self.shard_id(), leader: self.leader() }
    }

    fn epoch_error(&self) -> Error {
        self_epoch_error(self.descriptor(), &self.siblings)
    }

    /// Checks that a request routed with `epoch` and touching `keys` may run here now (a
    /// frozen shard serves nothing).
    fn check_epoch<'k>(&self, epoch: Epoch, mut keys: impl Iterator<Item = &'k [u8]>) -> Result<()> {
        let desc = self.descriptor();
        if desc.merging_into.is_some() || epoch.version != desc.epoch().version || !keys.all(|k| desc.contains(k)) {
            return Err(self.epoch_error());
        }
        Ok(())
    }

    /// Proposes a write; `cb` runs once it is applied here or failed.
    pub fn propose(&mut self, epoch: Epoch, ops: Vec<Op>, cb: WriteCallback) {
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

    fn propose_admin_with(&mut self, epoch: Epoch, admin: AdminEntry, cb: ProposalCallback) {
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
        let mut cmd = EntryCommand { shard_id: self.shard_id(), epoch: Some(epoch), ..EntryCommand::default() };
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
    fn check_admin(&self, epoch: Epoch, admin: &AdminEntry) -> Result<()> {
        let desc = self.descriptor();
        let bad = |reason: String| Err(Error::Config(format!("shard {}: {reason}", desc.id)));
        match admin {
            AdminEntry::Split(split) => self.check_split(epoch, split),
            AdminEntry::PrepareMerge(target) => {
                self.check_epoch(epoch, std::iter::empty())?;
                if target.id == desc.id || target.merging_into.is_some() {
                    return bad(format!("cannot merge into shard {}", target.id));
                }
                if !adjacent(desc, target) {
                    return bad(format!("shard {} is not adjacent", target.id));
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
                if !adjacent(desc, source) || !same_voters_only(desc, source) {
                    return bad(format!("shard {} is not adjacent with the same voters", source.id));
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
    fn check_split(&self, epoch: Epoch, split: &Split) -> Result<()> {
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

    fn propose_command(&mut self, cmd: EntryCommand, cb: ProposalCallback) {
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
        self.proposals.push_back(Proposal { index, term: self.raw.raft.term, cb });
    }

    /// Proposes a membership change (joint consensus when it has several steps).
    pub fn propose_conf_change(&mut self, cc: ConfChangeV2, cb: WriteCallback) {
        self.propose_conf_change_with(cc, ProposalCallback::Write(cb));
    }

    fn propose_conf_change_with(&mut self, cc: ConfChangeV2, cb: ProposalCallback) {
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
        self.proposals.push_back(Proposal { index, term: self.raw.raft.term, cb });
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
    fn in_joint(&self) -> bool {
        !self.raw.raft.prs().conf().to_conf_state().voters_outgoing.is_empty()
    }

    /// Starts a linearizable read at `now`; `cb` runs once the read index is applied here.
    ///
    /// With `lease` (lease reads on), a leader whose leadership a ReadIndex round confirmed
    /// less than `lease` ago reads at its commit index without a round trip. Why that is
    /// safe: the round's heartbeat, sent at `t`, reset the election timer of a quorum, none of
    /// which votes for another leader before an election timeout of its own ticks after `t`;
    /// `lease` is shorter by the clock-drift margin (see `RaftConfig::lease_reads`).
    pub fn read(
        &mut self,
        epoch: Epoch,
        request: ReadRequest,
        now: Instant,
        lease: Option<Duration>,
        cb: ReadCallback,
    ) {
        if !self.is_leader() {
            return cb(Err(self.not_leader()));
        }
        let keys: Vec<&[u8]> = match &request {
            ReadRequest::Get(k) => vec![k.as_slice()],
            ReadRequest::Scan { range, .. } => vec![range.start()],
        };
        if let Err(e) = self.check_epoch(epoch, keys.into_iter()) {
            return cb(Err(e));
        }
        let id = self.next_read_id;
        self.next_read_id += 1;
        let r = &self.raw.raft;
        let leased = lease.is_some()
            && r.term == self.lease_term
            && self.lease_until.is_some_and(|until| now < until)
            && r.commit_to_current_term();
        let index = leased.then_some(r.raft_log.committed);
        self.reads.push_back(PendingRead { id, issued: leased, age_ticks: 0, issued_at: now, index, request, cb });
        self.issue_reads(now);
    }

    /// Hands waiting reads to Raft once this leader has committed in its term.
    pub(crate) fn issue_reads(&mut self, now: Instant) {
        if !self.is_leader() || !self.raw.raft.commit_to_current_term() {
            return;
        }
        for r in self.reads.iter_mut().filter(|r| !r.issued) {
            r.issued = true;
            r.issued_at = now;
            self.raw.read_index(r.id.to_be_bytes().to_vec());
        }
    }

    /// Ages waiting reads by one tick and fails those older than `max_age_ticks` (their
    /// confirmation was lost); reads have no effect, so the client simply retries.
    pub(crate) fn expire_reads(&mut self, max_age_ticks: usize) {
        let shard_id = self.shard_id();
        let mut kept = VecDeque::with_capacity(self.reads.len());
        for mut r in self.reads.drain(..) {
            r.age_ticks += 1;
            if r.age_ticks > max_age_ticks {
                (r.cb)(Err(Error::ProposalDropped { shard_id, reason: "read not confirmed in time" }));
            } else {
                kept.push_back(r);
            }
        }
        self.reads = kept;
    }

    /// Records the read indexes Raft confirmed.
    /// Each one, with `lease`, extends this leader's lease from the instant its round began.
    pub(crate) fn on_read_states(&mut self, states: Vec<raft::ReadState>, lease: Option<Duration>) {
        let term = self.raw.raft.term;
        for rs in states {
            let Ok(id) = <[u8; 8]>::try_from(rs.request_ctx.as_slice()).map(u64::from_be_bytes) else { continue };
            if let Some(r) = self.reads.iter_mut().find(|r| r.id == id) {
                r.index = Some(rs.index);
                if let (Some(lease), true) = (lease, self.raw.raft.state == StateRole::Leader) {
                    let until = r.issued_at + lease;
                    if self.lease_term != term {
                        (self.lease_term, self.lease_until) = (term, None);
                    }
                    self.lease_until = Some(self.lease_until.map_or(until, |u| u.max(until)));
                }
            }
        }
    }

    /// Answers every read whose index is applied.
    pub(crate) fn serve_reads(&mut self, done: &mut Completions) {
        if self.reads.is_empty() {
            return;
        }
        let applied = self.raw.store().applied_index();
        let engine = self.raw.store().engine().clone();
        let desc = self.descriptor().clone();
        let now_ms = self.now_ms();
        let mut waiting = VecDeque::with_capacity(self.reads.len());
        for r in self.reads.drain(..) {
            if r.index.is_some_and(|i| i <= applied) {
                let start = match &r.request {
                    ReadRequest::Get(k) => k.as_slice(),
                    ReadRequest::Scan { range, .. } => range.start(),
                };
                // A split may have moved the key out while the read waited.
                let result = if desc.contains(start) {
                    execute_read(&engine, &desc, &r.request, now_ms)
                } else {
                    Err(self_epoch_error(&desc, &self.siblings))
                };
                let cb = r.cb;
                done.push(Box::new(move || cb(result)));
            } else {
                waiting.push_back(r);
            }
        }
        self.reads = waiting;
    }

    /// Answers every waiting proposal and read (leadership lost, or the replica is going
    /// away). Proposals are in the log and may still commit under another leader, so their
    /// outcome is unknown; reads simply did not happen.
    pub(crate) fn fail_pending(&mut self, reason: &'static str, done: &mut Completions) {
        let shard_id = self.shard_id();
        for p in self.proposals.drain(..) {
            done.push(Box::new(move || p.cb.fail(Error::OutcomeUnknown { shard_id, reason })));
        }
        // Their joint configuration is committed; only its leave is not applied here yet.
        for cb in self.joint_waiters.drain(..) {
            done.push(Box::new(move || cb(Err(Error::OutcomeUnknown { shard_id, reason }))));
        }
        let err = self.not_leader();
        for r in self.reads.drain(..) {
            let e = err.clone();
            done.push(Box::new(move || (r.cb)(Err(e))));
        }
    }

    /// Called after a soft-state change: a replica that stopped leading answers what waits.
    pub(crate) fn on_role_change(&mut self, done: &mut Completions) {
        if self.is_leader() {
            // A new leader does not know what its predecessor's sweep saw.
            self.sweep.expiring = true;
        }
        if !self.is_leader() && (!self.proposals.is_empty() || !self.reads.is_empty() || !self.joint_waiters.is_empty())
        {
            self.fail_pending("leadership lost before the write applied", done);
        }
    }

    /// Is a `PrepareMerge` in the log past the applied index?
    fn has_unapplied_prepare_merge(&self) -> bool {
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
    fn must_wait(&self, cmd: &EntryCommand, frozen: &BTreeMap<u64, ShardDescriptor>) -> bool {
        let Some(source) = cmd.commit_merge.as_ref().and_then(|c| c.source.as_ref()) else { return false };
        let epoch = cmd.epoch.unwrap_or_default();
        self.check_admin(epoch, &AdminEntry::CommitMerge(source.clone())).is_ok()
            && frozen.get(&source.id) != Some(source)
    }

    /// Applies committed entries into `wb` (after any that waited); callbacks go to `done`.
    /// Stops before a `CommitMerge` that must wait (see [`Peer::must_wait`]), and right after
    /// a `ComputeChecksum` that took effect, and keeps the rest in `pending_apply`: the store
    /// pins the engine once `wb` is written, when it holds this shard's data exactly as of
    /// that entry (`checksum_pending`), before anything later applies.
    pub(crate) fn apply(
        &mut self,
        entries: Vec<Entry>,
        frozen: &BTreeMap<u64, ShardDescriptor>,
        wb: &mut WriteBatch,
        done: &mut Completions,
    ) -> Result<()> {
        debug_assert!(
            self.checksum_pending.is_none(),
            "shard {}: an entry would apply before the checksum snapshot of an earlier one is pinned",
            self.shard_id()
        );
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
                        self.apply_compute_checksum(cmd.epoch.unwrap_or_default(), index)
                    } else {
                        // An `Err` here is the node's (its engine failed while deciding a
                        // condition): stop rather than let this replica decide differently.
                        self.apply_command(cmd, wb)?
                    }
                }
                EntryType::EntryConfChange => {
                    let cc = ConfChange::decode(entry.data.as_slice())
                        .map_err(|e| Error::Corrupt { what: "conf change", reason: e.to_string() })?;
                    // We only propose v2; a v1 change (one step) converts directly.
                    let single = ConfChangeSingle { change_type: cc.change_type, node_id: cc.node_id };
                    let v2 = ConfChangeV2 { transition: 0, changes: vec![single], context: cc.context };
                    self.apply_conf_change(&v2, wb)
                }
                EntryType::EntryConfChangeV2 => {
                    let cc = ConfChangeV2::decode(entry.data.as_slice())
                        .map_err(|e| Error::Corrupt { what: "conf change", reason: e.to_string() })?;
                    self.apply_conf_change(&cc, wb)
                }
            };
            self.raw.mut_store().set_applied(index, term, wb);
            self.complete_proposals(index, term, outcome, done);
            if self.checksum_pending.is_some() {
                break;
            }
        }
        Ok(())
    }

    fn complete_proposals(&mut self, index: u64, term: u64, outcome: Result<()>, done: &mut Completions) {
        let shard_id = self.shard_id();
        let mut outcome = Some(outcome);
        while self.proposals.front().is_some_and(|p| p.index <= index) {
            let Some(p) = self.proposals.pop_front() else { break };
            let result = if p.index == index && p.term == term {
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

    /// Applies a `ComputeChecksum`: no data changes; if it is valid at this position (the
    /// same on every replica), apply stops after it so that the store pins the engine with
    /// this shard's data exactly as of `index` (see [`Peer::apply`]).
    fn apply_compute_checksum(&mut self, epoch: Epoch, index: u64) -> Result<()> {
        self.check_admin(epoch, &AdminEntry::ComputeChecksum)?;
        let range = self.descriptor().range()?;
        self.checksum_pending = Some((index, range));
        Ok(())
    }

    /// Drops the pinned checksum snapshot (a Raft snapshot replaces this replica's data).
    pub(crate) fn drop_checksum_pin(&mut self) {
        self.checksum_pending = None;
        self.checksum_pin = None;
    }

    /// Applies one command: every replica makes the same epoch and range checks at the same
    /// log position, so all agree whether it takes effect.
    ///
    /// The outer `Result` is the node's: an engine read failing while a condition is decided
    /// (the node must stop). The inner one is the command's outcome, the same on every
    /// replica.
    fn apply_command(&mut self, cmd: EntryCommand, wb: &mut WriteBatch) -> Result<Result<()>> {
        let epoch = cmd.epoch.unwrap_or_default();
        if let Some(split) = cmd.split {
            return Ok(self.apply_split(epoch, split, wb));
        }
        if let Some(target) = cmd.prepare_merge.and_then(|p| p.target) {
            return Ok(self.apply_prepare_merge(epoch, target, wb));
        }
        if let Some(source) = cmd.commit_merge.and_then(|c| c.source) {
            return Ok(self.apply_commit_merge(epoch, source, wb));
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
        self.clock_floor_ms = self.clock_floor_ms.max(cmd.now_ms);
        // Every condition first, against the state before this command. A value that does
        // not decode is the same bytes on every replica: the command fails alike everywhere.
        let engine = self.raw.store().engine().clone();
        for op in &cmd.ops {
            if let Some(op::Kind::Check(c)) = &op.kind {
                let current = match current_stored(&engine, wb, &c.key)? {
                    None => None,
                    Some(stored) => match value::live_value(&c.key, stored, cmd.now_ms) {
                        Ok(v) => v,
                        Err(e) => return Ok(Err(e)),
                    },
                };
                if !check_holds(c, current.as_deref()) {
                    let (shard_id, key) = (self.shard_id(), c.key.clone());
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
                Some(op::Kind::DeleteRange(d)) => {
                    // Clip to the shard: a range delete never reaches a neighbour's keys.
                    if let Ok(r) = KeyRange::new(d.start, min_end(d.end.as_deref(), shard.end())) {
                        wb.delete_range(Cf::Data, r);
                    }
                }
                None => {}
            }
        }
        Ok(Ok(()))
    }

    /// Applies a split: this shard keeps the left part, a new shard starts on the right part
    /// with the same replicas and an initial Raft state, all in `wb` with the apply index.
    fn apply_split(&mut self, epoch: Epoch, split: Split, wb: &mut WriteBatch) -> Result<()> {
        self.check_admin(epoch, &AdminEntry::Split(split.clone()))?;
        let mut left = self.descriptor().clone();
        let mut new_epoch = left.epoch();
        new_epoch.version += 1;
        let right = ShardDescriptor {
            id: split.new_shard_id,
            start: split.split_key.clone(),
            end: left.end.take(),
            epoch: Some(new_epoch),
            replicas: left.replicas.clone(),
            merging_into: None,
        };
        left.end = Some(split.split_key);
        left.epoch = Some(new_epoch);
        debug_assert!(left.range().is_ok() && right.range().is_ok(), "both halves are valid ranges");
        tracing::info!(shard = left.id, new_shard = right.id, version = new_epoch.version, "shard split");
        let engine = self.raw.store().engine().clone();
        self.siblings.push_front(right.clone());
        self.siblings.truncate(MAX_SPLIT_SIBLINGS);
        if engine.get(Cf::Raft, &crate::keys::raft_state_key(right.id))?.is_some() {
            // This node already has a replica of the new shard (it got a snapshot of it before
            // replaying the split): that one is newer; keep it.
            tracing::info!(shard = right.id, "split replayed after the new shard arrived here; keeping it");
        } else {
            self.split_created.push(PeerStorage::initial(engine, right, wb));
        }
        self.raw.mut_store().set_descriptor(left, wb);
        Ok(())
    }

    /// Freezes this shard for its merge into `target`.
    fn apply_prepare_merge(&mut self, epoch: Epoch, target: ShardDescriptor, wb: &mut WriteBatch) -> Result<()> {
        self.check_admin(epoch, &AdminEntry::PrepareMerge(target.clone()))?;
        let mut desc = self.descriptor().clone();
        desc.merging_into = Some(target.id);
        desc.epoch = Some(Epoch { version: epoch.version + 1, ..desc.epoch() });
        tracing::info!(shard = desc.id, target = target.id, "shard frozen to merge");
        self.raw.mut_store().set_descriptor(desc, wb);
        Ok(())
    }

    /// Takes the frozen `source` over: the range grows over it and its replica here is
    /// destroyed, its data kept, in the same batch.
    fn apply_commit_merge(&mut self, epoch: Epoch, source: ShardDescriptor, wb: &mut WriteBatch) -> Result<()> {
        self.check_admin(epoch, &AdminEntry::CommitMerge(source.clone()))?;
        let mut desc = self.descriptor().clone();
        if source.end.as_deref() == Some(desc.start.as_slice()) {
            desc.start = source.start.clone();
        } else {
            desc.end = source.end.clone();
        }
        let version = desc.epoch().version.max(source.epoch().version) + 1;
        desc.epoch = Some(Epoch { version, ..desc.epoch() });
        debug_assert!(desc.range().is_ok(), "a merged range is valid");
        tracing::info!(shard = desc.id, source = source.id, version, "shards merged");
        self.sweep.expiring = true; // the source's values may expire too
        crate::storage::destroy_metadata(&source, wb);
        self.siblings.retain(|s| s.id != source.id);
        self.merged_sources.push(source.id);
        self.raw.mut_store().set_descriptor(desc, wb);
        Ok(())
    }

    /// Applies a membership change: raft-rs's configuration, and the descriptor derived from
    /// it with `conf_ver` + 1 (every conf change entry bumps it, the automatic leave of a
    /// joint configuration included). In a joint configuration every voter of either half is
    /// listed as a voter (it still votes in one of the two majorities): a voter being demoted
    /// (in `learners_next`) shows as a learner only once the joint state is left. Voters
    /// first, then learners, each by node id, so that every replica derives the same bytes.
    fn apply_conf_change(&mut self, cc: &ConfChangeV2, wb: &mut WriteBatch) -> Result<()> {
        let cs = self.raw.apply_conf_change(cc)?;
        let mut desc = self.descriptor().clone();
        let mut epoch = desc.epoch();
        epoch.conf_ver += 1;
        desc.epoch = Some(epoch);
        let voters: BTreeSet<u64> = cs.voters.iter().chain(cs.voters_outgoing.iter()).copied().collect();
        let learners: BTreeSet<u64> =
            cs.learners.iter().chain(cs.learners_next.iter()).copied().filter(|id| !voters.contains(id)).collect();
        debug_assert!(
            cs.learners.iter().all(|id| !voters.contains(id))
                && cs.learners_next.iter().all(|id| cs.voters_outgoing.contains(id) && !cs.voters.contains(id)),
            "raft-rs keeps learners out of both voter sets and demotes only outgoing voters: {cs:?}"
        );
        debug_assert!(
            !cs.voters_outgoing.is_empty() || cs.learners_next.is_empty(),
            "learners_next exists only in a joint configuration: {cs:?}"
        );
        desc.replicas = voters
            .iter()
            .map(|id| Replica::voter(*id))
            .chain(learners.iter().map(|id| Replica::learner(*id)))
            .collect();
        let me = self.node_id;
        self.removed = !desc.replicas.iter().any(|r| r.node_id == me);
        tracing::info!(
            node = me,
            shard = desc.id,
            conf_ver = epoch.conf_ver,
            joint = !cs.voters_outgoing.is_empty(),
            voters = ?voters,
            learners = ?learners,
            "membership changed"
        );
        self.raw.mut_store().set_membership(cs, desc, wb);
        Ok(())
    }
}

fn op_keys(op: &Op) -> Vec<&[u8]> {
    match &op.kind {
        Some(op::Kind::Put(p)) => vec![p.key.as_slice()],
        Some(op::Kind::Delete(d)) => vec![d.key.as_slice()],
        Some(op::Kind::DeleteRange(d)) => vec![d.start.as_slice()],
        Some(op::Kind::Check(c)) => vec![c.key.as_slice()],
        Some(op::Kind::DeleteExpired(d)) => vec![d.key.as_slice()],
        None => vec![],
    }
}

/// The stored bytes of `key` as of the writes already in `wb` (earlier commands of this apply
/// round) over the engine.
fn current_stored<R: Reader>(engine: &R, wb: &WriteBatch, key: &[u8]) -> Result<Option<Vec<u8>>> {
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

/// Does `check` hold for the live value `current`?
fn check_holds(check: &crate::wire::Check, current: Option<&[u8]>) -> bool {
    match Expect::from_i32(check.expect) {
        Some(Expect::Absent) => current.is_none(),
        Some(Expect::Present) => current.is_some(),
        Some(Expect::Equals) => current == Some(check.value.as_slice()),
        None => false, // an unknown expectation never holds
    }
}

/// Serves a read on the leader; values expired at `now_ms` (its wall clock) are absent.
fn execute_read<R: Reader>(
    engine: &R,
    desc: &ShardDescriptor,
    request: &ReadRequest,
    now_ms: u64,
) -> Result<ReadResponse> {
    match request {
        ReadRequest::Get(key) => match engine.get(Cf::Data, key)? {
            Some(stored) => Ok(ReadResponse::Value(value::live_value(key, stored, now_ms)?)),
            None => Ok(ReadResponse::Value(None)),
        },
        ReadRequest::Scan { range, max_keys, max_bytes } => {
            let shard = desc.range()?;
            let start = range.start().max(shard.start()).to_vec();
            let Ok(clipped) = KeyRange::new(start, min_end(range.end(), shard.end())) else {
                return Ok(ReadResponse::Pairs { pairs: Vec::new(), more: false, resume_after: None });
            };
            let page = engine.scan(Cf::Data, &clipped, ScanOrder::Forward, ScanLimit::new(*max_keys, *max_bytes))?;
            let resume_after = if page.more { page.pairs.last().map(|(k, _)| k.clone()) } else { None };
            let mut pairs = Vec::with_capacity(page.pairs.len());
            for (k, stored) in page.pairs {
                if let Some(v) = value::live_value(&k, stored, now_ms)? {
                    pairs.push((k, v));
                }
            }
            Ok(ReadResponse::Pairs { pairs, more: page.more, resume_after })
        }
    }
}

/// The smaller of two exclusive range ends (`None` is unbounded).
fn min_end(a: Option<&[u8]>, b: Option<&[u8]>) -> Option<Vec<u8>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b).to_vec()),
        (Some(x), None) | (None, Some(x)) => Some(x.to_vec()),
        (None, None) => None,
    }
}

fn self_epoch_error(desc: &ShardDescriptor, siblings: &VecDeque<ShardDescriptor>) -> Error {
    let mut current = vec![desc.clone()];
    current.extend(siblings.iter().cloned());
    Error::EpochNotMatch { shard_id: desc.id, current }
}

/// Do the two shards' ranges touch end to start?
fn adjacent(a: &ShardDescriptor, b: &ShardDescriptor) -> bool {
    a.end.as_deref() == Some(b.start.as_slice()) || b.end.as_deref() == Some(a.start.as_slice())
}

/// Same voters on both, and no learner on either.
fn same_voters_only(a: &ShardDescriptor, b: &ShardDescriptor) -> bool {
    let voters = |d: &ShardDescriptor| {
        let mut v: Vec<u64> = d.replicas.iter().map(|r| r.node_id).collect();
        v.sort_unstable();
        (v, d.replicas.iter().all(Replica::is_voter))
    };
    let (va, all_a) = voters(a);
    let (vb, all_b) = voters(b);
    all_a && all_b && va == vb
}
