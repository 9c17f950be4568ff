//! `Peer`: one shard replica - a raft-rs `RawNode` on a [`PeerStorage`], the proposals and
//! reads waiting on it, and the apply of committed entries into the engine. Its code is split
//! by operation (as TiKV's raftstore-v2 does), each file opening with its walk-through:
//! `propose` (writes, admin entries, membership changes), `read` (ReadIndex and leases),
//! `apply` (committed entries), `split`, `merge`, `conf_change`, `checksum` (checksum rounds)
//! and `sweep` (expired values). This file holds the replica's state and what every operation
//! shares (epoch checks, leadership, quiescence).
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
//! replica, learners included, apply stops right after it (`Applied::checksum_at`, the rest in
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

mod apply;
mod checksum;
mod conf_change;
mod merge;
mod propose;
mod read;
mod split;
mod sweep;

pub(crate) use apply::Applied;
pub(crate) use read::execute_read;

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
use crate::lease::{Lease, LeaseViews};
use crate::read_pool::{Admitted, ReadJob, ReadPool};
use crate::storage::PeerStorage;
use crate::value;
use crate::wire::{
    self, op, CommitMerge, EntryCommand, Epoch, Expect, Op, PrepareMerge, Replica, RequestId, ShardDescriptor, Split,
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
    /// One key, with its deadline.
    GetWithDeadline(Vec<u8>),
    /// Several keys of the shard, answered in order until their values reach `max_bytes`
    /// (at least one is answered): the rest are asked again.
    GetMany {
        /// The keys.
        keys: Vec<Vec<u8>>,
        /// At most this many value bytes in the answer (at least one value is returned).
        max_bytes: usize,
    },
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

impl ReadRequest {
    /// The keys the shard must hold for the read to be served (a scan's start).
    pub fn keys(&self) -> Vec<&[u8]> {
        match self {
            ReadRequest::Get(k) | ReadRequest::GetWithDeadline(k) => vec![k.as_slice()],
            ReadRequest::GetMany { keys, .. } => keys.iter().map(Vec::as_slice).collect(),
            ReadRequest::Scan { range, .. } => vec![range.start()],
        }
    }
}

/// The answer to a [`ReadRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadResponse {
    /// The value of the key, if any.
    Value(Option<Vec<u8>>),
    /// The value of the key and when it expires (Unix ms; none: never), if it has a value.
    ValueWithDeadline(Option<(Vec<u8>, Option<u64>)>),
    /// The values of the first keys of a `GetMany`, in order (maybe fewer than asked).
    Values(Vec<Option<Vec<u8>>>),
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
    /// When it was made (for the commit-latency metric only; never for decisions).
    proposed_at: std::time::Instant,
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
    /// Read under the leader's lease at the commit index of its arrival (no ReadIndex round
    /// unless the lease lapses before it is served).
    leased: bool,
    /// The ReadIndex round it was handed to Raft in (raft-rs drops read requests that reach
    /// a leader before it committed an entry of its own term, so they wait here until it has).
    round: Option<u64>,
    /// Ticks since the read arrived.
    age_ticks: usize,
    /// When it arrived, or was handed to Raft (the node's monotonic clock).
    issued_at: Instant,
    /// The read index once Raft confirmed leadership.
    index: Option<u64>,
    /// The replica's epoch version when the read was taken: a split or merge applied while
    /// it waited changes the range it would read, so it is answered `EpochNotMatch`.
    version: u64,
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
    /// The next ReadIndex round's id; its request context is this node's id, `read_nonce`
    /// and the round (see [`read_context`]).
    next_read_id: u64,
    /// Tells this replica's ReadIndex rounds apart from those of its earlier incarnations
    /// (a restart, a re-created replica) and of other replicas at the same leader.
    read_nonce: u64,
    /// Quiescent: caught up and idle, so the store neither ticks it nor visits it in ready
    /// rounds until a message or request wakes it.
    pub(crate) quiescent: bool,
    /// Ticks since the last write, read, role change or new log entry.
    pub(crate) idle_ticks: u64,
    /// With lease reads: this leader may answer reads from its state until this instant
    /// (exclusive), in term `lease_term` (see [`Peer::read`]).
    lease_until: Option<Instant>,
    lease_term: u64,
    /// Where this replica publishes its lease for reads off the loop (`local_read.rs`), and
    /// what it published last: the view's generation, lease end and epoch.
    lease_views: Arc<LeaseViews>,
    published_lease: Option<(u64, Instant, Epoch)>,
    /// The leader this replica published as its hint while following (see `lease.rs`).
    published_leader_hint: Option<u64>,
    /// The latest shards split off this one, returned with `EpochNotMatch` so that a client
    /// can route without asking elsewhere (at most [`MAX_SPLIT_SIBLINGS`]).
    siblings: VecDeque<ShardDescriptor>,
    /// Committed entries not applied yet because a `CommitMerge` waits for this node's
    /// source replica; at most one ready's worth, since the store takes no new ready from a
    /// replica while this is not empty.
    pub(crate) pending_apply: VecDeque<Entry>,
    /// The expiry sweep's state (see [`Peer::sweep_expired`]).
    sweep: Sweep,
    /// The latest expiry time this replica used (see [`Peer::now_ms`]); shared with reads
    /// served off the loop.
    clock_floor_ms: Arc<std::sync::atomic::AtomicU64>,
    /// The newest pinned checksum snapshot (dropped when a Raft snapshot is installed here, or
    /// after `CHECKSUM_PIN_MAX_AGE_SECS`).
    pub(crate) checksum_pin: Option<ChecksumPin<E>>,
    /// Swaps whose joint configuration this leader entered, waiting until it is left.
    joint_waiters: Vec<WriteCallback>,
    /// The request records this replica knows without reading the engine (see
    /// [`crate::dedup::KnownRecords`]).
    known_records: crate::dedup::KnownRecords,
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
    /// The request-record walk's next page starts after this (client, slot).
    requests_after: Option<crate::dedup::Slot>,
    /// A sweep proposal is waiting to apply: no other is made meanwhile.
    in_flight: Arc<std::sync::atomic::AtomicBool>,
}

/// Bytes one sweep page may read.
pub const SWEEP_PAGE_BYTES: usize = 1 << 20;

/// Split-off shards a replica remembers for `EpochNotMatch` answers.
pub const MAX_SPLIT_SIBLINGS: usize = 4;

/// Most reads one replica keeps waiting (for their ReadIndex round or their apply); more are
/// refused with a retryable error.
pub const MAX_PENDING_READS: usize = 65_536;

impl<E: Engine> Peer<E> {
    /// A replica over `storage`.
    pub fn new(
        node_id: u64,
        storage: PeerStorage<E>,
        config: &RaftConfig,
        lease_views: Arc<LeaseViews>,
    ) -> Result<Self> {
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
            read_nonce: read_nonce(),
            quiescent: false,
            idle_ticks: 0,
            lease_until: None,
            lease_term: 0,
            lease_views,
            published_lease: None,
            published_leader_hint: None,
            siblings: VecDeque::new(),
            pending_apply: VecDeque::new(),
            sweep: Sweep {
                expiring: true,
                seen_this_pass: false,
                resume_after: None,
                requests_after: None,
                in_flight: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            },
            clock_floor_ms: Arc::default(),
            checksum_pin: None,
            joint_waiters: Vec::new(),
            known_records: crate::dedup::KnownRecords::default(),
        })
    }

    /// A new ready round starts: the last round's batch is in the engine.
    pub(crate) fn start_round(&mut self) {
        self.known_records.start_round();
    }

    /// Forgets the request records known in memory: a snapshot replaced them in the engine,
    /// or the replica sleeps (between rounds only).
    pub(crate) fn forget_known_records(&mut self) {
        self.known_records.clear();
    }

    /// The clock for expiry on this replica: the group's clock (`crate::clock`), never behind a time this replica
    /// already applied or read with, so a value seen expired stays expired across proposals
    /// and reads even if the wall clock steps back. (It is not persisted: after a restart,
    /// or under a new leader, it is only as good as the clocks' agreement.)
    pub(crate) fn now_ms(&mut self) -> u64 {
        let now = self.lease_views.clock.now_ms();
        self.clock_floor_ms.fetch_max(now, std::sync::atomic::Ordering::Relaxed).max(now)
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
            && !self.leads_as_learner()
            && self.proposals.is_empty()
            && self.reads.is_empty()
            && self.joint_waiters.is_empty()
            && self.pending_apply.is_empty()
            && r.read_only.pending_read_count() == 0
            && r.lead_transferee.is_none()
            && r.raft_log.committed == last
            && r.raft_log.persisted == last
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
            && r.raft_log.persisted == commit
            && r.pending_request_snapshot == raft::INVALID_INDEX
    }

    /// Tells Raft how far this replica applied (entries behind a waiting CommitMerge or a
    /// ComputeChecksum are not), never past what is durable here: raft-rs counts a snapshot
    /// installed only once its write completed.
    pub(crate) fn report_applied(&mut self) {
        let applied = self.raw.store().applied_index().min(self.raw.raft.raft_log.persisted);
        if applied >= self.raw.raft.raft_log.applied {
            self.raw.advance_apply_to(applied);
        }
    }

    /// True for a follower that is its shard's only voter while log writes are in flight:
    /// it would win an election with no vote from anyone, and raft-rs requires the whole log
    /// durable when a node becomes leader.
    pub(crate) fn must_persist_before_campaign(&self) -> bool {
        let r = &self.raw.raft;
        let mut voters = self.descriptor().replicas.iter().filter(|x| x.is_voter());
        let alone = voters.next().is_some_and(|v| v.node_id == self.node_id) && voters.next().is_none();
        r.state != StateRole::Leader && alone && r.raft_log.persisted < r.raft_log.last_index()
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
}

impl<E: Engine> Drop for Peer<E> {
    fn drop(&mut self) {
        // A replica that goes (destroyed, merged away, replaced) serves no more reads. Its
        // fence goes too: a replica made again here leads only after an election, in a newer
        // term.
        self.withdraw_lease();
        self.lease_views.forget_fence(self.shard_id());
        if self.published_leader_hint.take().is_some() {
            self.lease_views.set_leader_hint(self.shard_id(), None);
        }
    }
}

fn self_epoch_error(desc: &ShardDescriptor, siblings: &VecDeque<ShardDescriptor>) -> Error {
    let mut current = vec![desc.clone()];
    current.extend(siblings.iter().cloned());
    Error::EpochNotMatch { shard_id: desc.id, current }
}

fn op_keys(op: &Op) -> Vec<&[u8]> {
    match &op.kind {
        Some(op::Kind::Put(p)) => vec![p.key.as_slice()],
        Some(op::Kind::Delete(d)) => vec![d.key.as_slice()],
        Some(op::Kind::DeleteRange(d)) => vec![d.start.as_slice()],
        Some(op::Kind::Check(c)) => vec![c.key.as_slice()],
        Some(op::Kind::DeleteExpired(d)) => vec![d.key.as_slice()],
        Some(op::Kind::ForgetRequest(_)) | None => vec![],
    }
}

/// A value no other incarnation of a replica in this cluster shares in practice: the wall
/// clock's nanoseconds when it was made, mixed with a count of replicas made by this process.
fn read_nonce() -> u64 {
    static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let made = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    nanos ^ made.rotate_left(40) ^ 0x9e37_79b9_7f4a_7c15
}

/// The request context of ReadIndex round `round` of a replica: node id, nonce, round.
pub(crate) fn read_context(node_id: u64, nonce: u64, round: u64) -> Vec<u8> {
    [node_id, nonce, round].iter().flat_map(|x| x.to_be_bytes()).collect()
}

/// The node id, nonce and round of a [`read_context`]; `None` for anything else.
pub(crate) fn parse_read_context(ctx: &[u8]) -> Option<(u64, u64, u64)> {
    let ctx = <[u8; 24]>::try_from(ctx).ok()?;
    let word = |i: usize| ctx[i * 8..i * 8 + 8].try_into().ok().map(u64::from_be_bytes);
    Some((word(0)?, word(1)?, word(2)?))
}

/// Does `left` end where `right` starts? A merge's target is always its source's left
/// neighbour: a shard then keeps its start key until it is merged away (a split keeps the
/// left part, a merge only moves a range's end), which `Store::merged_owner` relies on.
fn left_of(left: &ShardDescriptor, right: &ShardDescriptor) -> bool {
    left.end.as_deref() == Some(right.start.as_slice())
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

/// The smaller of two exclusive range ends (`None` is unbounded).
fn min_end(a: Option<&[u8]>, b: Option<&[u8]>) -> Option<Vec<u8>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b).to_vec()),
        (Some(x), None) | (None, Some(x)) => Some(x.to_vec()),
        (None, None) => None,
    }
}
