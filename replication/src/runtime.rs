//! The node runtime: one tokio task owns a node's [`Store`] and drives it - ticks on a timer,
//! messages and client requests from a bounded mailbox, then one ready round, whose messages
//! go to the [`Transport`]. Everything else talks to it through a [`NodeHandle`]. A node
//! process runs that task on a thread of its own ([`Node::spawn_on_own_thread`]), with its log
//! writes synced by a writer thread beside it, so the loop goes on while they sync; tests on
//! paused time run it on their runtime ([`Node::spawn`]), the log writes completing on the
//! loop after the messages that arrived meanwhile, so that a seed replays exactly.
//!
//! **Budgets.** The mailbox holds at most `max-mailbox-msgs` messages and `max-mailbox-bytes`
//! of Raft messages and proposed writes (a request past either is refused `Busy`, a Raft
//! message dropped: Raft resends). A round takes at most `max-msgs-per-round` messages and
//! stops taking more once they carry `max-round-bytes`; committed entries applied per round
//! are bounded by raft-rs's `max-apply-bytes-per-ready`. So each round's engine batches are
//! bounded in bytes whatever the burst.
//!
//! `Node`/`NodeHandle`: a task per node, ticks on an interval, a bounded mailbox
//! (`max_mailbox_msgs`, `Busy` when full), at most `max_msgs_per_round` between ready rounds; after
//! an engine write failure the node hands its leaderships away, then stops
//! (`store/fail_stop.rs`). A loop silent for `max-mailbox-wait-ms` (blocked in a write on a
//! stalled disk) has its reads and writes refused `Unresponsive` at once, and a write it has
//! not taken by then is withdrawn. Its `select!` is `biased` (tick first): tokio's random
//! branch choice would make seeded runs on paused time diverge. It gives the store its monotonic
//! clock (`set_now`) before every tick and request, for read leases. `compute_checksum(shard,
//! epoch)` (leader: proposes `ComputeChecksum`, waits until applied here) and
//! `replica_checksum(shard, index)` (any replica: `ChecksumNotReady` before `index` is applied,
//! `ChecksumMissed` past it without a pin there) return `ChecksumAt { index, checksum }`; the node
//! task only hands out the pinned snapshot and range (`Store::checksum_pin` -> `PinnedData`), the
//! `range_checksum` scan runs on `spawn_blocking`. `swap_replicas(shard, promote, demote)`.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use presage_engine::{range_checksum, Cf, Engine, RangeChecksum};
use prost::Message as _;
use raft::eraftpb::{ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, Message, MessageType};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::RaftConfig;
use crate::error::{Error, Result};
use crate::local_read::LocalReader;
use crate::peer::{AdminEntry, ReadRequest, ReadResponse};
use crate::store::{PinnedData, ShardStatus, Store, StoreSummary};
use crate::transport::Transport;
use crate::wire::{Epoch, Op, RaftEnvelope, RequestId, ShardDescriptor, Split};

enum NodeMsg {
    Raft(Box<RaftEnvelope>),
    Write {
        shard_id: u64,
        epoch: Epoch,
        ops: Vec<Op>,
        request_id: Option<RequestId>,
        claim: Arc<AtomicU8>,
        reply: oneshot::Sender<Result<()>>,
    },
    Read {
        shard_id: u64,
        epoch: Epoch,
        request: ReadRequest,
        replica: bool,
        reply: oneshot::Sender<Result<ReadResponse>>,
    },
    ConfChange {
        shard_id: u64,
        cc: ConfChangeV2,
        reply: oneshot::Sender<Result<()>>,
    },
    Swap {
        shard_id: u64,
        promote: u64,
        demote: u64,
        reply: oneshot::Sender<Result<()>>,
    },
    Checksum {
        shard_id: u64,
        epoch: Epoch,
        reply: oneshot::Sender<Result<u64>>,
    },
    ChecksumPin {
        shard_id: u64,
        index: u64,
        reply: oneshot::Sender<Result<PinnedData>>,
    },
    Admin {
        shard_id: u64,
        epoch: Epoch,
        admin: AdminEntry,
        reply: oneshot::Sender<Result<()>>,
    },
    TransferLeader {
        shard_id: u64,
        to: u64,
        reply: oneshot::Sender<Result<()>>,
    },
    ShedLeaderships {
        reply: oneshot::Sender<Vec<(u64, u64)>>,
    },
    Campaign {
        shard_id: u64,
        reply: oneshot::Sender<Result<()>>,
    },
    Status {
        shard_id: u64,
        reply: oneshot::Sender<Option<ShardStatus>>,
    },
    Statuses {
        reply: oneshot::Sender<Vec<ShardStatus>>,
    },
    ProbeStale {
        descriptor: ShardDescriptor,
        reply: oneshot::Sender<bool>,
    },
    ProbeMerged {
        shard_id: u64,
        owner: ShardDescriptor,
        reply: oneshot::Sender<bool>,
    },
    Summary {
        reply: oneshot::Sender<StoreSummary>,
    },
    SetSnapshotRate {
        bytes_per_sec: u64,
        reply: oneshot::Sender<u64>,
    },
}

/// A shard's range checksum as of a log index: equal on two replicas at the same index means
/// equal data (up to crc32 plus exact counts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChecksumAt {
    /// Index of the `ComputeChecksum` entry the data was pinned at.
    pub index: u64,
    /// Checksum of the shard's `Data` pairs (stored values, headers included) in its range
    /// at that index.
    pub checksum: RangeChecksum,
}

/// A running node.
pub struct Node {
    handle: NodeHandle,
    driver: Driver,
}

/// What drives a node's loop.
enum Driver {
    /// A task on the caller's runtime (tests on paused time).
    Task(JoinHandle<()>),
    /// A thread of its own with a single-threaded runtime (and a log writer thread), so that
    /// the loop's engine writes block only it, never a worker that serves connections.
    Thread { abort: tokio::task::AbortHandle, thread: std::thread::JoinHandle<()> },
}

/// Talks to a running node. Cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    node_id: u64,
    tx: mpsc::Sender<Queued>,
    /// Bytes of Raft messages and writes in the mailbox.
    queued_bytes: Arc<AtomicUsize>,
    max_mailbox_bytes: usize,
    /// A write not taken by the loop after this long is withdrawn.
    max_mailbox_wait_ms: u64,
    /// When the loop last woke for a round.
    beat: Arc<LoopBeat>,
    /// Leased reads served without the loop (see `local_read.rs`).
    local: Arc<LocalReader>,
    /// The node's transport, for the envelopes [`NodeHandle::hand_off_stuck`] sends without
    /// the loop.
    direct: DirectSend,
    /// The loop's beat when [`NodeHandle::hand_off_stuck`] last ran (`u64::MAX`: never):
    /// until the loop beats again, requests are refused at once.
    stuck_at_beat: Arc<AtomicU64>,
    /// Wakes the requests waiting on the loop when it is found stuck.
    stuck_found: Arc<tokio::sync::Notify>,
}

/// Sends an envelope through the node's transport from outside the loop.
type DirectSend = Arc<dyn Fn(RaftEnvelope) + Send + Sync>;

/// A write's claim: waiting in the mailbox, taken by the loop (proposed), or withdrawn by
/// its caller (never proposed). Whoever moves it from `WAITING` first decides.
const WAITING: u8 = 0;
const TAKEN: u8 = 1;
const WITHDRAWN: u8 = 2;

/// When the loop last woke for a round: it does at least once a tick, so a loop silent for
/// much longer is blocked (in an engine write on a stalled disk).
struct LoopBeat {
    base: tokio::time::Instant,
    /// Ms since `base` when the loop last woke.
    at_ms: AtomicU64,
}

impl LoopBeat {
    fn new() -> Self {
        LoopBeat { base: tokio::time::Instant::now(), at_ms: AtomicU64::new(0) }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn beat(&self) {
        self.at_ms.fetch_max(self.now_ms(), Ordering::Release);
    }

    /// Ms since the loop last woke for a round.
    fn silent_ms(&self) -> u64 {
        self.now_ms().saturating_sub(self.at_ms.load(Ordering::Acquire))
    }
}

/// A message in the mailbox and the bytes it counts for.
struct Queued {
    msg: NodeMsg,
    bytes: usize,
}

impl NodeMsg {
    /// The bytes the message counts for in the mailbox's and the round's budgets.
    fn bytes(&self) -> usize {
        match self {
            NodeMsg::Raft(env) => env.encoded_len(),
            NodeMsg::Write { ops, .. } => ops.iter().map(|op| op.encoded_len()).sum(),
            _ => 0,
        }
    }
}

impl Node {
    /// Starts driving `store`, sending through `transport`.
    pub fn spawn<E: Engine, T: Transport>(store: Store<E>, transport: T, config: &RaftConfig) -> Node {
        let config = config.clone();
        let transport = Arc::new(crate::transport::Stamped::new(transport, store.clock()));
        let direct = Arc::clone(&transport);
        let (tx, rx) = mpsc::channel(config.max_mailbox_msgs);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let handle = NodeHandle {
            node_id: store.node_id(),
            tx,
            queued_bytes: Arc::clone(&queued_bytes),
            max_mailbox_bytes: config.max_mailbox_bytes,
            max_mailbox_wait_ms: config.max_mailbox_wait_ms,
            beat: Arc::new(LoopBeat::new()),
            local: Arc::new(store.local_reader()),
            direct: Arc::new(move |env| direct.send(env)),
            stuck_at_beat: Arc::new(AtomicU64::new(u64::MAX)),
            stuck_found: Arc::default(),
        };
        let beat = Arc::clone(&handle.beat);
        let task = tokio::spawn(async move {
            // Log writes complete on the loop, after the messages that arrived meanwhile:
            // a run on paused time replays exactly from its seed.
            let mut store = store;
            if let Err(e) = store.defer_log_writes() {
                tracing::error!(node = store.node_id(), error = %e, "engine write failed; stopping the node");
                return;
            }
            run(store, transport, rx, queued_bytes, beat, config).await
        });
        Node { handle, driver: Driver::Task(task) }
    }

    /// Starts driving `store` on a thread of its own (see [`Node`]'s drivers): what a node
    /// process does. The transport's links stay on the caller's runtime.
    pub fn spawn_on_own_thread<E: Engine, T: Transport>(
        mut store: Store<E>,
        transport: T,
        config: &RaftConfig,
    ) -> Result<Node> {
        // Log writes on a thread of their own: the loop goes on while they sync, and the
        // messages that wait for a write leave from that thread once it is durable.
        let transport = Arc::new(crate::transport::Stamped::new(transport, store.clock()));
        let from_writer = Arc::clone(&transport);
        store.use_log_writer_thread(Some(Arc::new(move |env| from_writer.send(env))))?;
        let direct = Arc::clone(&transport);
        store.start_read_pool()?;
        let (tx, rx) = mpsc::channel(config.max_mailbox_msgs);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let node_id = store.node_id();
        let handle = NodeHandle {
            node_id,
            tx,
            queued_bytes: Arc::clone(&queued_bytes),
            max_mailbox_bytes: config.max_mailbox_bytes,
            max_mailbox_wait_ms: config.max_mailbox_wait_ms,
            beat: Arc::new(LoopBeat::new()),
            local: Arc::new(store.local_reader()),
            direct: Arc::new(move |env| direct.send(env)),
            stuck_at_beat: Arc::new(AtomicU64::new(u64::MAX)),
            stuck_found: Arc::default(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Thread(e.to_string()))?;
        let beat = Arc::clone(&handle.beat);
        let task = rt.spawn(run(store, transport, rx, queued_bytes, beat, config.clone()));
        let abort = task.abort_handle();
        let thread = std::thread::Builder::new()
            .name(format!("raft-store-{node_id}"))
            .spawn(move || {
                // Ends with the loop (stopped, failed or aborted).
                let _ = rt.block_on(task);
            })
            .map_err(|e| Error::Thread(e.to_string()))?;
        Ok(Node { handle, driver: Driver::Thread { abort, thread } })
    }

    /// A handle to the node.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Stops the node at once (as a crash would: nothing is flushed beyond what is written).
    /// A node on its own thread is waited for until that thread ends, so that its engine is
    /// closed before the caller goes on (a process that exits with it still open aborts).
    pub fn kill(self) {
        match self.driver {
            Driver::Task(task) => task.abort(),
            Driver::Thread { abort, thread } => {
                abort.abort();
                // The loop ends at its next await; a panic there was already reported.
                let _ = thread.join();
            }
        }
    }

    /// True once the node's loop ended (stopped, or failed).
    pub fn is_finished(&self) -> bool {
        match &self.driver {
            Driver::Task(task) => task.is_finished(),
            Driver::Thread { thread, .. } => thread.is_finished(),
        }
    }
}

async fn run<E: Engine, T: Transport>(
    mut store: Store<E>,
    transport: T,
    mut rx: mpsc::Receiver<Queued>,
    queued_bytes: Arc<AtomicUsize>,
    beat: Arc<LoopBeat>,
    config: RaftConfig,
) {
    let take = |q: Queued, round_bytes: &mut usize| {
        queued_bytes.fetch_sub(q.bytes, Ordering::Relaxed);
        *round_bytes += q.bytes;
        q.msg
    };
    let node_id = store.node_id();
    let mut ticker = tokio::time::interval(config.tick_interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let log_written = store.log_writer_signal();
    // Set once an engine write failed: when the node stops at the latest.
    let mut failing_until: Option<tokio::time::Instant> = None;
    loop {
        // `biased`: a fixed order (tick first) instead of tokio's random pick, so that a run on
        // paused time replays exactly from its seed. Ticks come once per interval, so
        // messages are not starved.
        tokio::select! {
            biased;
            _ = ticker.tick() => {
                store.set_now(tokio::time::Instant::now().into_std());
                if store.is_failing() {
                    store.tick_failing();
                } else {
                    store.tick();
                }
            }
            msg = rx.recv() => {
                let Some(msg) = msg else { break };
                let mut round_bytes = 0;
                handle(&mut store, take(msg, &mut round_bytes));
                for _ in 1..config.max_msgs_per_round {
                    if round_bytes >= config.max_round_bytes {
                        break;
                    }
                    match rx.try_recv() {
                        Ok(msg) => handle(&mut store, take(msg, &mut round_bytes)),
                        Err(_) => break,
                    }
                }
            }
            // The writer thread finished a batch.
            _ = async { log_written.as_ref()?.notified().await; Some(()) }, if log_written.is_some() && !store.is_failing() => {}
            // Deferred log writes complete when nothing else is ready.
            _ = std::future::ready(()), if store.has_deferred_log_writes() && !store.is_failing() => {}
        }
        beat.beat();
        if let Some(deadline) = failing_until {
            // Fail-stop after hand-off (`store/fail_stop.rs`): rounds that write nothing,
            // until nothing is led here or the time is up.
            store.process_ready_failing(&mut |env| transport.send(env));
            if !store.leads_any() || tokio::time::Instant::now() >= deadline {
                tracing::info!(node = node_id, leads = store.leads_any(), "leaderships handed away; stopping the node");
                break;
            }
            continue;
        }
        // Log writes done meanwhile (their replicas advance, the messages that waited go),
        // then the ready round. A failed engine write may leave the in-memory state ahead of
        // the disk: the node hands its leaderships away writing nothing, then stops; a
        // restart recovers from what is durable.
        let result = store.complete_log_writes().and_then(|out| {
            out.into_iter().for_each(|env| transport.send(env));
            store.process_ready_sending(&mut |env| transport.send(env))
        });
        match result {
            Ok(out) => out.into_iter().for_each(|env| transport.send(env)),
            Err(e) => {
                let handed = store.begin_fail_stop();
                tracing::error!(
                    node = node_id,
                    error = %e,
                    transfers = handed.len(),
                    "engine write failed; handing leaderships away, then stopping the node"
                );
                store.process_ready_failing(&mut |env| transport.send(env));
                if !store.leads_any() {
                    break;
                }
                failing_until = Some(tokio::time::Instant::now() + Duration::from_millis(config.fail_stop_timeout_ms));
            }
        }
    }
    tracing::info!(node = node_id, "node stopped");
}

fn handle<E: Engine>(store: &mut Store<E>, msg: NodeMsg) {
    // Fresh for every request: a read lease is checked against this instant.
    store.set_now(tokio::time::Instant::now().into_std());
    if store.is_failing() {
        return handle_failing(store, msg);
    }
    match msg {
        NodeMsg::Raft(env) => {
            if let Err(e) = store.step(*env) {
                tracing::warn!(node = store.node_id(), error = %e, "could not create a replica for an incoming message");
            }
        }
        NodeMsg::Write { shard_id, epoch, ops, request_id, claim, reply } => {
            // The caller may have withdrawn it while it waited (see `NodeHandle::write`).
            if claim.compare_exchange(WAITING, TAKEN, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                store.propose(shard_id, epoch, ops, request_id, Box::new(move |r| drop(reply.send(r))));
            }
        }
        NodeMsg::Read { shard_id, epoch, request, replica, reply } => {
            store.read(shard_id, epoch, request, replica, Box::new(move |r| drop(reply.send(r))));
        }
        NodeMsg::ConfChange { shard_id, cc, reply } => {
            store.propose_conf_change(shard_id, cc, Box::new(move |r| drop(reply.send(r))));
        }
        NodeMsg::Swap { shard_id, promote, demote, reply } => {
            store.swap_replicas(shard_id, promote, demote, Box::new(move |r| drop(reply.send(r))));
        }
        NodeMsg::Checksum { shard_id, epoch, reply } => {
            store.propose_checksum(shard_id, epoch, Box::new(move |r| drop(reply.send(r))));
        }
        NodeMsg::ChecksumPin { shard_id, index, reply } => drop(reply.send(store.checksum_pin(shard_id, index))),
        NodeMsg::Admin { shard_id, epoch, admin, reply } => {
            store.propose_admin(shard_id, epoch, admin, Box::new(move |r| drop(reply.send(r))));
        }
        NodeMsg::TransferLeader { shard_id, to, reply } => drop(reply.send(store.transfer_leader(shard_id, to))),
        NodeMsg::ShedLeaderships { reply } => drop(reply.send(store.shed_leaderships())),
        NodeMsg::Campaign { shard_id, reply } => drop(reply.send(store.campaign(shard_id))),
        NodeMsg::Status { shard_id, reply } => drop(reply.send(store.status(shard_id))),
        NodeMsg::Statuses { reply } => drop(reply.send(store.statuses())),
        NodeMsg::ProbeStale { descriptor, reply } => drop(reply.send(store.probe_stale(&descriptor))),
        NodeMsg::ProbeMerged { shard_id, owner, reply } => drop(reply.send(store.probe_merged(shard_id, &owner))),
        NodeMsg::Summary { reply } => drop(reply.send(store.summary())),
        NodeMsg::SetSnapshotRate { bytes_per_sec, reply } => drop(reply.send(store.set_snapshot_rate(bytes_per_sec))),
    }
}

/// While failing (fail-stop after hand-off): Raft messages step existing replicas, questions
/// about state are answered, everything that would write or serve is refused `DiskFailed`.
fn handle_failing<E: Engine>(store: &mut Store<E>, msg: NodeMsg) {
    match msg {
        NodeMsg::Raft(env) => store.step_failing(*env),
        NodeMsg::Write { reply, .. }
        | NodeMsg::ConfChange { reply, .. }
        | NodeMsg::Swap { reply, .. }
        | NodeMsg::Admin { reply, .. }
        | NodeMsg::TransferLeader { reply, .. }
        | NodeMsg::Campaign { reply, .. } => drop(reply.send(Err(Error::DiskFailed))),
        NodeMsg::Read { reply, .. } => drop(reply.send(Err(Error::DiskFailed))),
        NodeMsg::Checksum { reply, .. } => drop(reply.send(Err(Error::DiskFailed))),
        NodeMsg::ChecksumPin { reply, .. } => drop(reply.send(Err(Error::DiskFailed))),
        NodeMsg::ShedLeaderships { reply } => drop(reply.send(store.shed_leaderships())),
        NodeMsg::Status { shard_id, reply } => drop(reply.send(store.status(shard_id))),
        NodeMsg::Statuses { reply } => drop(reply.send(store.statuses())),
        NodeMsg::ProbeStale { reply, .. } | NodeMsg::ProbeMerged { reply, .. } => drop(reply.send(false)),
        NodeMsg::Summary { reply } => drop(reply.send(store.summary())),
        NodeMsg::SetSnapshotRate { bytes_per_sec, reply } => drop(reply.send(store.set_snapshot_rate(bytes_per_sec))),
    }
}

impl NodeHandle {
    /// The node's id.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    fn post(&self, msg: NodeMsg) -> Result<()> {
        let bytes = msg.bytes();
        if self.queued_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes > self.max_mailbox_bytes && bytes > 0 {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            return Err(Error::Busy);
        }
        self.tx.try_send(Queued { msg, bytes }).map_err(|e| {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            match e {
                mpsc::error::TrySendError::Full(_) => Error::Busy,
                mpsc::error::TrySendError::Closed(_) => Error::Stopped,
            }
        })
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> NodeMsg) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.post(make(reply))?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Hands an incoming Raft message to the node; dropped if its mailbox is full.
    pub fn deliver(&self, env: RaftEnvelope) {
        if self.post(NodeMsg::Raft(Box::new(env))).is_err() {
            tracing::debug!(node = self.node_id, "mailbox full or closed: dropping a raft message");
        }
    }

    /// Writes `ops` atomically to `shard_id` (this node must lead it). A write the loop has
    /// not taken within `max-mailbox-wait-ms` is withdrawn: `Unresponsive`, never proposed.
    pub async fn write(&self, shard_id: u64, epoch: Epoch, ops: Vec<Op>) -> Result<()> {
        self.write_once(shard_id, epoch, ops, None).await
    }

    /// [`NodeHandle::write`] of a request a client may retry: every attempt carrying the
    /// same `request_id` applies at most once, and an attempt after the one that applied
    /// answers `Ok` (see `crate::dedup`).
    pub async fn write_once(
        &self,
        shard_id: u64,
        epoch: Epoch,
        ops: Vec<Op>,
        request_id: Option<RequestId>,
    ) -> Result<()> {
        let stuck = self.stuck_found.notified();
        self.check_responsive()?;
        let claim = Arc::new(AtomicU8::new(WAITING));
        let (reply, mut rx) = oneshot::channel();
        self.post(NodeMsg::Write { shard_id, epoch, ops, request_id, claim: Arc::clone(&claim), reply })?;
        let wait = Duration::from_millis(self.max_mailbox_wait_ms);
        let answered = tokio::select! {
            answer = &mut rx => Some(answer),
            () = tokio::time::sleep(wait) => None,
            () = stuck => None,
        };
        match answered {
            Some(answer) => answer.map_err(|_| Error::Stopped)?,
            None if claim.compare_exchange(WAITING, WITHDRAWN, Ordering::AcqRel, Ordering::Acquire).is_ok() => {
                Err(Error::Unresponsive { silent_ms: self.beat.silent_ms() })
            }
            // The loop took it: its outcome is Raft's now.
            None => rx.await.map_err(|_| Error::Stopped)?,
        }
    }

    /// A linearizable read on `shard_id` (this node must lead it).
    /// Served on the caller's thread while the leader's lease holds, else by the loop.
    pub async fn read(&self, shard_id: u64, epoch: Epoch, request: ReadRequest) -> Result<ReadResponse> {
        self.read_at(shard_id, epoch, request, false).await
    }

    /// A linearizable read on `shard_id` served by this node's replica whether it leads or
    /// follows (a replica read: a follower asks its leader for the read index, then reads its
    /// own engine once it has applied that far).
    pub async fn replica_read(&self, shard_id: u64, epoch: Epoch, request: ReadRequest) -> Result<ReadResponse> {
        self.read_at(shard_id, epoch, request, true).await
    }

    async fn read_at(&self, shard_id: u64, epoch: Epoch, request: ReadRequest, replica: bool) -> Result<ReadResponse> {
        let now = || tokio::time::Instant::now().into_std();
        match self.local.try_read(shard_id, epoch, &request, now) {
            // A follower's redirect is for leader reads only: a replica read goes to its loop.
            Some(Err(Error::NotLeader { .. })) if replica => {}
            Some(answer) => return answer,
            None => {}
        }
        let stuck = self.stuck_found.notified();
        self.check_responsive()?;
        // A read has no effect: one the loop has not answered in time is simply abandoned.
        let wait = Duration::from_millis(self.max_mailbox_wait_ms);
        let ask = self.ask(|reply| NodeMsg::Read { shard_id, epoch, request, replica, reply });
        tokio::select! {
            answer = ask => answer?,
            () = tokio::time::sleep(wait) => Err(Error::Unresponsive { silent_ms: self.beat.silent_ms() }),
            () = stuck => Err(Error::Unresponsive { silent_ms: self.beat.silent_ms() }),
        }
    }

    /// Ms since the loop last woke for a round (at most a tick when healthy).
    pub fn loop_silent_ms(&self) -> u64 {
        self.beat.silent_ms()
    }

    /// `Unresponsive` when the loop has made no progress for `max-mailbox-wait-ms`, or was
    /// found stuck ([`NodeHandle::hand_off_stuck`]) and has not beaten since.
    fn check_responsive(&self) -> Result<()> {
        let silent_ms = self.beat.silent_ms();
        let stuck = self.stuck_at_beat.load(Ordering::Acquire) == self.beat.at_ms.load(Ordering::Acquire);
        if silent_ms >= self.max_mailbox_wait_ms || stuck {
            return Err(Error::Unresponsive { silent_ms });
        }
        Ok(())
    }

    /// Reads served off the loop (under a published lease) since the node started.
    pub fn local_reads(&self) -> u64 {
        self.local.served()
    }

    /// Proposes a membership change of `shard_id` (this node must lead it).
    pub async fn change_membership(&self, shard_id: u64, cc: ConfChangeV2) -> Result<()> {
        self.ask(|reply| NodeMsg::ConfChange { shard_id, cc, reply }).await?
    }

    /// Adds a learner replica of `shard_id` on `node` (this node must lead the shard).
    pub async fn add_learner(&self, shard_id: u64, node: u64) -> Result<()> {
        self.change_membership(shard_id, single_change(ConfChangeType::AddLearnerNode, node)).await
    }

    /// Makes the learner of `shard_id` on `node` a voter (this node must lead the shard).
    pub async fn promote_learner(&self, shard_id: u64, node: u64) -> Result<()> {
        self.change_membership(shard_id, single_change(ConfChangeType::AddNode, node)).await
    }

    /// Removes the replica of `shard_id` on `node` (this node must lead the shard).
    pub async fn remove_replica(&self, shard_id: u64, node: u64) -> Result<()> {
        self.change_membership(shard_id, single_change(ConfChangeType::RemoveNode, node)).await
    }

    /// Swaps two replicas of `shard_id` in one joint-consensus change (Raft §6): the learner on
    /// `promote` becomes a voter and the voter on `demote` a learner, atomically
    /// (`ConfChangeV2 { transition: Auto, [AddNode(promote), AddLearnerNode(demote)] }`; raft-rs
    /// leaves the joint configuration on its own). This node must lead the shard and must not
    /// be `demote` (hand the leadership away first). Answers once the joint configuration is
    /// left here; `SwapRefused` (nothing proposed) when `promote` is not a learner, `demote`
    /// not a voter, or another membership change is in flight.
    pub async fn swap_replicas(&self, shard_id: u64, promote: u64, demote: u64) -> Result<()> {
        self.ask(|reply| NodeMsg::Swap { shard_id, promote, demote, reply }).await?
    }

    /// Checksums `shard_id` at a log index (this node must lead it, routed with `epoch`):
    /// proposes a `ComputeChecksum`, which pins every replica's data (voters and learners)
    /// exactly as of its index when it applies there, and returns this replica's checksum at
    /// that index. Ask the other replicas with [`NodeHandle::replica_checksum`] at the same
    /// index. The scan runs on a blocking thread, never on the node's task. Fails like any
    /// proposal (`NotLeader`, `EpochNotMatch`, `OutcomeUnknown`, ...), or with
    /// `ChecksumMissed` if a concurrent round replaced the pin before it was read (start again).
    pub async fn compute_checksum(&self, shard_id: u64, epoch: Epoch) -> Result<ChecksumAt> {
        let index = self.ask(|reply| NodeMsg::Checksum { shard_id, epoch, reply }).await??;
        self.replica_checksum(shard_id, index).await
    }

    /// This node's replica's checksum of `shard_id` at `index`, the index of a
    /// `ComputeChecksum` (see [`NodeHandle::compute_checksum`]). `ChecksumNotReady` when the
    /// replica has not applied `index` yet (retry later); `ChecksumMissed` when it applied
    /// past `index` without its data pinned there (start a new round). The scan runs on a
    /// blocking thread.
    pub async fn replica_checksum(&self, shard_id: u64, index: u64) -> Result<ChecksumAt> {
        let pinned = self.ask(|reply| NodeMsg::ChecksumPin { shard_id, index, reply }).await??;
        tokio::task::spawn_blocking(move || {
            let checksum = range_checksum(&*pinned.reader, Cf::Data, &pinned.range)?;
            Ok(ChecksumAt { index: pinned.index, checksum })
        })
        .await
        .map_err(|e| Error::Engine(format!("checksum scan of shard {shard_id} failed: {e}")))?
    }

    /// Splits `shard_id` (this node must lead it) at `split_key`; the right part becomes
    /// shard `new_shard_id`. Answers once the split is applied here.
    pub async fn split(&self, shard_id: u64, epoch: Epoch, split_key: Vec<u8>, new_shard_id: u64) -> Result<()> {
        self.admin(shard_id, epoch, AdminEntry::Split(Split { split_key, new_shard_id })).await
    }

    /// Proposes an admin command to `shard_id` (this node must lead it); answers once it is
    /// applied here.
    pub async fn admin(&self, shard_id: u64, epoch: Epoch, admin: AdminEntry) -> Result<()> {
        self.ask(|reply| NodeMsg::Admin { shard_id, epoch, admin, reply }).await?
    }

    /// Merges shard `source` into its neighbour `target` (this node must lead both; they
    /// must have the same voters and no learners). Returns the target's new descriptor.
    ///
    /// 1. `PrepareMerge` freezes the source.
    /// 2. Every source replica must report the freeze committed within `confirm_timeout`;
    ///    otherwise the merge rolls back (`RollbackMerge`) and fails with `ProposalDropped`.
    ///    This is what lets a replica that lags finish the merge on its own later: its source
    ///    replica holds the committed freeze, so it applies it without a source leader.
    /// 3. `CommitMerge` extends the target. If it fails, the source is unfrozen only when no
    ///    `CommitMerge` of this freeze can ever apply: the target's applied state already
    ///    refuses one (not adjacent, other voters) or its epoch moved on (a `CommitMerge` applies
    ///    only at the epoch it was proposed at, and the log applies in order, so one still
    ///    pending is refused). Otherwise the source stays frozen and the error is returned;
    ///    calling `merge` again resumes. Unfreezing while a `CommitMerge` may still apply would
    ///    leave the replicas that apply it waiting for a freeze that was undone. In step 2, only
    ///    a call that froze the source itself rolls back (no `CommitMerge` exists yet). One
    ///    merge per source at a time (the caller serialises them).
    pub async fn merge(&self, source: u64, target: u64, confirm_timeout: Duration) -> Result<ShardDescriptor> {
        let (src, tgt) = (self.descriptor(source).await?, self.descriptor(target).await?);
        let resuming = src.merging_into == Some(target);
        let frozen = if resuming {
            src
        } else {
            self.admin(source, src.epoch(), AdminEntry::PrepareMerge(tgt.clone())).await?;
            self.descriptor(source).await?
        };
        let deadline = tokio::time::Instant::now() + confirm_timeout;
        loop {
            let s = self.status(source).await?.ok_or(Error::ShardNotFound { shard_id: source })?;
            if s.replicas_committed.is_some_and(|c| c >= s.applied) {
                break;
            }
            if s.leader != Some(self.node_id) {
                return Err(Error::NotLeader { shard_id: source, leader: s.leader });
            }
            if tokio::time::Instant::now() >= deadline && resuming {
                return Err(Error::ProposalDropped {
                    shard_id: source,
                    reason: "source replicas did not confirm the freeze yet",
                });
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::info!(source, target, "a source replica did not confirm the freeze; rolling back");
                self.admin(source, frozen.epoch(), AdminEntry::RollbackMerge).await?;
                let reason = "a source replica did not confirm the freeze in time; merge rolled back";
                return Err(Error::ProposalDropped { shard_id: source, reason });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let Err(e) = self.admin(target, tgt.epoch(), AdminEntry::CommitMerge(frozen.clone())).await else {
            return self.descriptor(target).await;
        };
        let now = self.descriptor(target).await?;
        let covers = now.start <= frozen.start
            && now.end.as_deref().is_none_or(|e| frozen.end.as_deref().is_some_and(|f| f <= e));
        if covers {
            return Ok(now); // an earlier attempt's CommitMerge went through
        }
        if matches!(e, Error::Config(_)) || now.epoch() != tgt.epoch() {
            tracing::info!(source, target, error = %e, "the merge can no longer commit; rolling back");
            self.admin(source, frozen.epoch(), AdminEntry::RollbackMerge).await?;
        }
        Err(e)
    }

    async fn descriptor(&self, shard_id: u64) -> Result<ShardDescriptor> {
        self.status(shard_id).await?.map(|s| s.descriptor).ok_or(Error::ShardNotFound { shard_id })
    }

    /// Asks this node, the leader of `shard_id`, to hand leadership to `to`.
    pub async fn transfer_leader(&self, shard_id: u64, to: u64) -> Result<()> {
        self.ask(|reply| NodeMsg::TransferLeader { shard_id, to, reply }).await?
    }

    /// Hands every leadership of this node to its most caught-up voter; returns the
    /// transfers started, `(shard, to)` (see `Store::shed_leaderships`).
    pub async fn shed_leaderships(&self) -> Result<Vec<(u64, u64)>> {
        self.ask(|reply| NodeMsg::ShedLeaderships { reply }).await
    }

    /// For a loop stuck in a disk call (the node's own disk check calls it): fences each
    /// lease this node published (`lease.rs`), then asks one other voter of that shard to
    /// campaign at once, with the `MsgTimeoutNow` a leadership transfer sends, at the
    /// lease's term, through the transport and without the loop. Returns `(shard, to)` for
    /// each. Only shards under a published lease are handed off this way (the others wait
    /// for the followers' election timers). Elections stay safe whoever starts them; the
    /// loop, once back, steps down on hearing the new term, or, still leading a fenced term
    /// (its target was behind or the message lost), hands the leadership on itself.
    ///
    /// Until the loop beats again, requests are refused at once (`Unresponsive`, as after
    /// `max-mailbox-wait-ms`), and those waiting on it are withdrawn now: clients go to the
    /// new leaders instead of waiting on this node.
    pub fn hand_off_stuck(&self) -> Vec<(u64, u64)> {
        self.stuck_at_beat.store(self.beat.at_ms.load(Ordering::Acquire), Ordering::Release);
        self.stuck_found.notify_waiters();
        let mut started = Vec::new();
        let views = self.local.views();
        for (shard_id, _, desc) in views.list() {
            let others: Vec<u64> =
                desc.replicas.iter().filter(|r| r.is_voter() && r.node_id != self.node_id).map(|r| r.node_id).collect();
            // Spread by shard, so that one node does not take every leadership. A shard
            // without another voter keeps its leader, and its lease.
            let Some(&to) = others.get((shard_id % others.len().max(1) as u64) as usize) else { continue };
            // Fenced before the message leaves (the lease's premise ends here).
            let Some((term, desc)) = views.fence(shard_id) else { continue };
            let mut m = Message::default();
            m.set_msg_type(MessageType::MsgTimeoutNow);
            (m.from, m.to, m.term) = (self.node_id, to, term);
            let env = RaftEnvelope {
                shard_id,
                from_node: self.node_id,
                to_node: to,
                message: Some(m),
                epoch: desc.epoch,
                ..RaftEnvelope::default()
            };
            (self.direct)(env);
            started.push((shard_id, to));
        }
        started
    }

    /// Makes this node's replica of `shard_id` campaign.
    pub async fn campaign(&self, shard_id: u64) -> Result<()> {
        self.ask(|reply| NodeMsg::Campaign { shard_id, reply }).await?
    }

    /// The state of this node's replica of `shard_id`.
    pub async fn status(&self, shard_id: u64) -> Result<Option<ShardStatus>> {
        self.ask(|reply| NodeMsg::Status { shard_id, reply }).await
    }

    /// The state of every replica on the node.
    pub async fn statuses(&self) -> Result<Vec<ShardStatus>> {
        self.ask(|reply| NodeMsg::Statuses { reply }).await
    }

    /// Tells the node that `descriptor` may be a newer configuration of its shard without
    /// it: the node asks that configuration's members, and a member that confirms it (a
    /// tombstone) has the local replica destroyed ([`Store::probe_stale`]). Returns whether it
    /// asked.
    pub async fn probe_stale(&self, descriptor: ShardDescriptor) -> Result<bool> {
        self.ask(|reply| NodeMsg::ProbeStale { descriptor, reply }).await
    }

    /// Tells the node that its replica `shard_id` is of a shard the manager no longer lists,
    /// and that `owner` holds the replica's start key now: the node asks `owner`'s members
    /// whether the shard was merged away ([`Store::probe_merged`]). Returns whether it asked.
    pub async fn probe_merged(&self, shard_id: u64, owner: ShardDescriptor) -> Result<bool> {
        self.ask(|reply| NodeMsg::ProbeMerged { shard_id, owner, reply }).await
    }

    /// Counts over every replica of the node.
    pub async fn summary(&self) -> Result<StoreSummary> {
        self.ask(|reply| NodeMsg::Summary { reply }).await
    }

    /// Sets the node's snapshot bandwidth budget (clamped to the configured floor and cap);
    /// returns the rate set, in bytes per second.
    pub async fn set_snapshot_rate(&self, bytes_per_sec: u64) -> Result<u64> {
        self.ask(|reply| NodeMsg::SetSnapshotRate { bytes_per_sec, reply }).await
    }
}

/// A membership change of one replica.
fn single_change(change: ConfChangeType, node: u64) -> ConfChangeV2 {
    ConfChangeV2 {
        transition: ConfChangeTransition::Auto as i32,
        changes: vec![ConfChangeSingle { change_type: change as i32, node_id: node }],
        context: Vec::new(),
    }
}
