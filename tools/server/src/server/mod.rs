//! The node server: one replication node plus what makes it part of a cluster (design.md §3).
//!
//! - Serves the native protocol ([`presage_client::Request`]): data requests for shards this
//!   node leads (forwarded once to the leader it knows otherwise), routes and joins for the
//!   shard manager, operator steps from the shard manager.
//! - Counts every served request per shard ([`presage_shardmgr::LoadRecorder`]) and sends a
//!   heartbeat with node stats and per-shard load to the shard manager every interval
//!   (`heartbeat`).
//! - Runs the shard manager while its replica of the meta shard leads (`manager`): it
//!   loads the persisted state, ticks the pure [`presage_shardmgr::Manager`], writes its
//!   records to the meta shard, then sends its commands.
//! - Carries out operator steps on the shards it leads (`execute`).
//!
//! [`mem_rpc`] is the in-process request transport of the test clusters.
//!
//! A data request that meets `NotLeader` with a hint is forwarded once, as `Forwarded`, and the
//! leader's reply goes back as `Redirected { leader }` so the client re-routes; system keys are
//! refused. Routes, cluster info and operator requests go to the shard manager (forwarded once
//! to the node believed to run it); joins and heartbeats are never forwarded (their sender is
//! told where the manager is). Every request is first checked against its proven caller
//! (`access`).

mod access;
pub mod admission;
mod check;
mod config;
pub mod consistency;
pub mod convert;
mod disk_space;
pub mod error;
mod execute;
mod gauges;
mod heartbeat;
mod manager;
pub mod mem_rpc;
use check::check_request;
pub use check::{MAX_CHECKS_PER_BATCH, MAX_GET_MANY_ANSWER_BYTES};
mod meta_io;
pub mod pfa;
pub mod pfa_store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use presage_client::proto::{nodes_digest, ClusterInfo, ShardRow};
use presage_client::{BatchOp, Caller, Expect, ProtoError, Request, Response, Route, Rpc, RpcError};
use presage_engine::{Engine, KeyRange};
use presage_replication::wire::Expect as WireExpect;
use presage_replication::{NodeHandle, Op, ReadRequest, ReadResponse};
use presage_shardmgr::{AdminError, KeySpan, LoadRecorder, Manager, NodeId, NodeMeta, ShardId};
use tokio::task::JoinHandle;

pub use config::ServerConfig;
use convert::{is_shard_fault, proto_error, request_id, wire_epoch};

/// Milliseconds on the shard manager's clock: wall time when the clock was made plus the
/// runtime's monotonic time since. Operators' timestamps are persisted, so successive managers
/// must agree on it: nodes use the wall clock; an in-process test cluster shares one clock
/// among its nodes (its paused tokio time runs far ahead of the wall clock).
#[derive(Debug, Clone)]
pub struct Clock {
    base_ms: u64,
    base: tokio::time::Instant,
}

impl Clock {
    /// The wall clock (through the runtime's monotonic clock from now on).
    pub fn wall() -> Self {
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Clock { base_ms: wall.as_millis() as u64, base: tokio::time::Instant::now() }
    }

    /// Now, in ms.
    pub fn now_ms(&self) -> u64 {
        self.base_ms + self.base.elapsed().as_millis() as u64
    }
}

pub(crate) struct Inner<E: Engine> {
    pub(crate) cfg: ServerConfig,
    pub(crate) me: NodeMeta,
    pub(crate) node: NodeHandle,
    pub(crate) engine: E,
    pub(crate) rpc: Arc<dyn Rpc>,
    pub(crate) clock: Clock,
    /// Load counters of the shards this node served, by shard.
    pub(crate) load: Mutex<HashMap<ShardId, LoadRecorder>>,
    /// The shard manager, while this node runs it. Never held across an await.
    pub(crate) manager: Mutex<Option<Manager>>,
    /// Serialises writes to the meta shard, so records land in the order they were taken.
    pub(crate) meta_writes: tokio::sync::Mutex<()>,
    /// The node believed to run the shard manager (where heartbeats go; any answer may set it).
    pub(crate) manager_hint: Mutex<Option<NodeId>>,
    /// The shard manager as proven: this node's own meta replica's leader, or a node that
    /// answered a heartbeat (or join) as the manager itself over its authenticated connection.
    /// Only its operator steps are carried out.
    pub(crate) manager_known: Mutex<Option<NodeId>>,
    /// The nodes this one joined through (asked when no manager is known).
    pub(crate) seeds: Mutex<Vec<NodeId>>,
    /// The other nodes of the cluster as last learned from the manager (asked, after the
    /// seeds, when no manager is known: a node emptied of its meta replica, or one that
    /// bootstrapped the cluster and has no seeds, must still find a manager that moved).
    pub(crate) known_peers: Mutex<Vec<NodeId>>,
    /// Requests being served.
    inflight: tokio::sync::Semaphore,
    /// The consistency checker's state ([`consistency`]).
    pub(crate) consistency: Mutex<consistency::ConsistencyState>,
    /// Free space against the reserve ([`disk_space`]).
    pub(crate) disk_space: disk_space::DiskSpace,
    /// Admission of data requests by priority ([`admission`]).
    pub(crate) admission: Mutex<admission::Admission>,
    /// Sources this node is merging (one merge per source at a time).
    pub(crate) merging: Mutex<std::collections::HashSet<ShardId>>,
    /// [`nodes_digest`] of the node list last learned.
    pub(crate) nodes_digest: std::sync::atomic::AtomicU64,
    /// Splits and merges this node carried out (as the leader of the shard).
    pub(crate) splits: std::sync::atomic::AtomicU64,
    pub(crate) merges: std::sync::atomic::AtomicU64,
    /// The failure analysis (fed while this node runs the shard manager).
    pub(crate) pfa: Mutex<pfa::PfaState>,
    /// The telemetry agent, when the node runs one (the `presage` binary does).
    pub(crate) agent: Mutex<Option<crate::agent::Agent>>,
    /// Writes this node proposed as leader since the last sample: count and total seconds.
    pub(crate) proposals: Mutex<(u64, f64)>,
    /// Wakes the shard manager's runtime before its next round (a new disk warning).
    pub(crate) manager_wake: tokio::sync::Notify,
    /// This node's recent telemetry samples, for a shard manager that takes over (at most
    /// [`heartbeat::MAX_TELEMETRY_BACKLOG_SAMPLES`]).
    pub(crate) telemetry_backlog: Mutex<std::collections::VecDeque<presage_shardmgr::TelemetryReport>>,
    /// The manager asked for the backlog: the next heartbeat carries it.
    pub(crate) telemetry_backlog_wanted: std::sync::atomic::AtomicBool,
    /// Set while the node's own disk check hands its leaderships away; heartbeats tell the
    /// shard manager, which then gives this node none.
    pub(crate) shedding_leaders: Arc<std::sync::atomic::AtomicBool>,
    /// Heartbeats sent without a manager hint: picks the seed to ask in turn.
    pub(crate) heartbeat_turn: std::sync::atomic::AtomicUsize,
    /// A task probes the replicas the manager does not list (at most one at a time).
    pub(crate) probing_unlisted: std::sync::atomic::AtomicBool,
    /// The cluster this node belongs to (0 until it bootstraps or joins one); shared with the
    /// peer listener and dialler, which check it in every handshake.
    pub(crate) cluster_id: Arc<std::sync::atomic::AtomicU64>,
}

/// A data request admitted by [`admission::Admission`]: dropping it counts the request out.
struct Admitted<'a, E: Engine> {
    inner: &'a Inner<E>,
    priority: presage_client::Priority,
    started: std::time::Instant,
}

impl<E: Engine> Drop for Admitted<'_, E> {
    fn drop(&mut self) {
        let at_risk = self.inner.shedding_leaders.load(std::sync::atomic::Ordering::Relaxed);
        let latency_us = self.started.elapsed().as_micros() as u64;
        lock(&self.inner.admission).done(self.priority, latency_us, self.inner.clock.now_ms(), at_risk);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A running node server. Dropping it does not stop it; call [`Server::stop`].
pub struct Server<E: Engine> {
    inner: Arc<Inner<E>>,
    tasks: Vec<JoinHandle<()>>,
}

impl<E: Engine> Server<E> {
    /// Starts serving for the replication node `node` (whose store runs on `engine`),
    /// reaching other nodes through `rpc`, timing the shard manager with `clock`. A node of a
    /// brand-new cluster is bootstrapped first (its store holds
    /// [`convert::bootstrap_descriptors`]); any other node calls [`Server::join`] next.
    /// `cluster_id` holds the cluster's id once known (a bootstrapping node with 0 has its
    /// shard manager make one).
    pub fn start(
        cfg: ServerConfig,
        me: NodeMeta,
        node: NodeHandle,
        engine: E,
        rpc: Arc<dyn Rpc>,
        clock: Clock,
        cluster_id: Arc<std::sync::atomic::AtomicU64>,
    ) -> Self {
        let inflight = tokio::sync::Semaphore::new(cfg.max_inflight_requests);
        let admission = admission::Admission::new(cfg.admission.clone(), cfg.max_inflight_requests, clock.now_ms());
        let pfa = pfa::PfaState::new(cfg.pfa.clone(), None, None);
        let inner = Arc::new(Inner {
            cfg,
            me,
            node,
            engine,
            rpc,
            clock,
            load: Mutex::new(HashMap::new()),
            manager: Mutex::new(None),
            meta_writes: tokio::sync::Mutex::new(()),
            manager_hint: Mutex::new(None),
            manager_known: Mutex::new(None),
            seeds: Mutex::new(Vec::new()),
            known_peers: Mutex::new(Vec::new()),
            inflight,
            admission: Mutex::new(admission),
            merging: Mutex::new(std::collections::HashSet::new()),
            nodes_digest: std::sync::atomic::AtomicU64::new(0),
            splits: std::sync::atomic::AtomicU64::new(0),
            merges: std::sync::atomic::AtomicU64::new(0),
            pfa: Mutex::new(pfa),
            agent: Mutex::new(None),
            proposals: Mutex::new((0, 0.0)),
            manager_wake: tokio::sync::Notify::new(),
            telemetry_backlog: Mutex::default(),
            telemetry_backlog_wanted: std::sync::atomic::AtomicBool::new(false),
            shedding_leaders: Arc::default(),
            heartbeat_turn: std::sync::atomic::AtomicUsize::new(0),
            probing_unlisted: std::sync::atomic::AtomicBool::new(false),
            consistency: Mutex::default(),
            disk_space: disk_space::DiskSpace::default(),
            cluster_id,
        });
        let tasks = vec![
            tokio::spawn(heartbeat::run(Arc::clone(&inner))),
            tokio::spawn(manager::run(Arc::clone(&inner))),
            tokio::spawn(consistency::run(Arc::clone(&inner))),
        ];
        Server { inner, tasks }
    }

    /// The function that serves this node's requests from proven callers (register it with
    /// the transports).
    pub fn handler(&self) -> mem_rpc::Handler {
        let inner = Arc::clone(&self.inner);
        Arc::new(move |caller, request| {
            let inner = Arc::clone(&inner);
            Box::pin(async move { inner.serve(caller, request).await })
        })
    }

    /// Serves one request from this process itself.
    pub async fn serve(&self, request: Request) -> Response {
        self.inner.serve(Caller::Local, request).await
    }

    /// Registers this node with the cluster through any of `seeds` (each forwards to the
    /// shard manager); returns the cluster id. Retries until `timeout`.
    pub async fn join(&self, seeds: &[NodeId], timeout: Duration) -> Result<u64, JoinError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::from("no seed");
        loop {
            for &seed in seeds {
                // A seed that does not run the shard manager names it; ask that node once.
                let mut asked = seed;
                let mut answer = self.inner.call(seed, Request::Join { node: self.inner.me.clone() }).await;
                if let Ok(Response::Error(ProtoError::NotManager { leader: Some(m) })) = answer {
                    if m != seed {
                        asked = m;
                        answer = self.inner.call(m, Request::Join { node: self.inner.me.clone() }).await;
                    }
                }
                match answer {
                    Ok(Response::Joined { cluster_id, manager, nodes }) => {
                        self.inner.learn(&nodes);
                        *lock(&self.inner.manager_hint) = Some(manager);
                        // Only the manager answers a join: one naming another node is wrong.
                        if manager == asked {
                            *lock(&self.inner.manager_known) = Some(manager);
                        }
                        *lock(&self.inner.seeds) = seeds.to_vec();
                        self.inner.cluster_id.store(cluster_id, std::sync::atomic::Ordering::SeqCst);
                        return Ok(cluster_id);
                    }
                    Ok(Response::Error(ProtoError::JoinRefused(why))) => return Err(JoinError::Refused(why)),
                    Ok(other) => last = format!("node {seed}: {other:?}"),
                    Err(e) => last = e.to_string(),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(JoinError::TimedOut { timeout, last });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The nodes to ask for the shard manager when none is known (a restarted node's peers
    /// from its configuration; [`Server::join`] sets them too).
    pub fn set_seeds(&self, seeds: &[NodeId]) {
        *lock(&self.inner.seeds) = seeds.to_vec();
    }

    /// A function that sets the seeds later (see [`Server::set_seeds`]).
    pub fn seed_setter(&self) -> impl Fn(&[NodeId]) + Send + Sync + 'static {
        let inner = Arc::clone(&self.inner);
        move |seeds| *lock(&inner.seeds) = seeds.to_vec()
    }

    /// Waits until no request is being served (at most `timeout`); new ones are refused
    /// meanwhile with `Retry`.
    pub async fn drain(&self, timeout: Duration) {
        let all = self.inner.cfg.max_inflight_requests as u32;
        if tokio::time::timeout(timeout, self.inner.inflight.acquire_many(all)).await.is_err() {
            tracing::warn!(node = self.inner.me.id, "requests still running at shutdown");
        }
    }

    /// The flag the node's own disk check sets while it hands leaderships away (reported
    /// with every heartbeat).
    pub fn shedding_leaders_flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        Arc::clone(&self.inner.shedding_leaders)
    }

    /// Runs `agent` with every heartbeat: its samples travel to the shard manager.
    pub fn set_agent(&self, agent: crate::agent::Agent) {
        *lock(&self.inner.agent) = Some(agent);
    }

    /// The failure models the shard manager uses while this node runs it.
    pub fn set_pfa_models(
        &self,
        node_model: Option<presage_pfa::model::FailureModel>,
        disk_model: Option<presage_pfa::model::FailureModel>,
    ) {
        *lock(&self.inner.pfa) = pfa::PfaState::new(self.inner.cfg.pfa.clone(), node_model, disk_model);
    }

    /// This node's replication node.
    pub fn node(&self) -> &NodeHandle {
        &self.inner.node
    }

    /// Now on the shard manager's clock of this node (ms).
    pub fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    /// True while this node runs the shard manager.
    pub fn is_manager(&self) -> bool {
        lock(&self.inner.manager).is_some()
    }

    /// Runs `f` on the shard manager, if this node runs it (tests and the admin API).
    pub fn with_manager<T>(&self, f: impl FnOnce(&mut Manager) -> T) -> Option<T> {
        lock(&self.inner.manager).as_mut().map(f)
    }

    /// Stops the server's tasks (the replication node is stopped separately).
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

impl<E: Engine> Inner<E> {
    /// Records where the cluster's nodes are (the transport resolves ids with it).
    pub(crate) fn learn(&self, nodes: &[NodeMeta]) {
        if nodes.is_empty() {
            return;
        }
        self.rpc.learn(nodes);
        *lock(&self.known_peers) = nodes
            .iter()
            .filter(|n| n.id != self.me.id && n.state != presage_shardmgr::NodeState::Removed)
            .map(|n| n.id)
            .collect();
        self.nodes_digest.store(nodes_digest(nodes), std::sync::atomic::Ordering::Relaxed);
    }

    /// Calls `to`, bounded by the RPC timeout.
    pub(crate) async fn call(&self, to: NodeId, request: Request) -> Result<Response, RpcError> {
        self.call_within(to, request, Duration::from_millis(self.cfg.rpc_timeout_ms)).await
    }

    /// Calls `to`, bounded by `timeout`.
    pub(crate) async fn call_within(
        &self,
        to: NodeId,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, RpcError> {
        match tokio::time::timeout(timeout, self.rpc.call(to, request)).await {
            Ok(r) => r,
            Err(_) => Err(RpcError::Lost(to)),
        }
    }

    /// Serves `request` if `caller` may ask it ([`access`]).
    pub(crate) async fn serve(self: &Arc<Self>, caller: Caller, request: Request) -> Response {
        if let Err(e) = access::check(&caller, &request, *lock(&self.manager_known)) {
            if matches!(e, ProtoError::PermissionDenied(_)) {
                tracing::warn!(node = self.me.id, caller = %caller.describe(), error = %e, "request refused");
            }
            return Response::Error(e);
        }
        let Ok(_permit) = self.inflight.try_acquire() else {
            return Response::Error(ProtoError::Retry("node busy: too many requests in flight".into()));
        };
        if let Some(priority) = request.route().map(|r| r.priority) {
            return self.admitted(priority, request).await;
        }
        match request {
            Request::Forwarded { request } => Box::pin(self.serve_one(*request, false)).await,
            other => self.serve_one(other, true).await,
        }
    }

    /// Serves a data request of `priority` if admission lets it in ([`admission`]), timing it.
    async fn admitted(self: &Arc<Self>, priority: presage_client::Priority, request: Request) -> Response {
        if let Err(e) = lock(&self.admission).try_admit(priority) {
            return Response::Error(e);
        }
        // Counted out when served, and also when the caller gives up on it (the future is
        // dropped) or it panics: an admitted request never holds its place for good.
        let _admitted = Admitted { inner: self, priority, started: std::time::Instant::now() };
        match request {
            Request::Forwarded { request } => Box::pin(self.serve_one(*request, false)).await,
            other => self.serve_one(other, true).await,
        }
    }

    async fn serve_one(self: &Arc<Self>, request: Request, may_forward: bool) -> Response {
        match request {
            Request::Get { .. }
            | Request::GetWithExpiry { .. }
            | Request::GetMany { .. }
            | Request::Put { .. }
            | Request::Delete { .. }
            | Request::Scan { .. }
            | Request::Batch { .. } => self.data(request, may_forward).await,
            Request::Hello => Response::Hello { node: self.me.clone() },
            Request::Routes { .. }
            | Request::Join { .. }
            | Request::Heartbeat { .. }
            | Request::ClusterInfo
            | Request::Forecast { .. }
            | Request::Capacity
            | Request::Pfa { .. }
            | Request::Shards { .. }
            | Request::Admin { .. } => self.manager_request(request, may_forward).await,
            Request::Execute { command } => execute::run(self, command).await,
            Request::ReplicaChecksum { shard, index } => execute::replica_checksum(self, shard, index).await,
            Request::VerifyShard { shard } => execute::verify_shard(self, shard, may_forward).await,
            Request::Forwarded { .. } => {
                Response::Error(ProtoError::Invalid("a forwarded request is not forwarded again".into()))
            }
            Request::Auth { .. } => {
                Response::Error(ProtoError::Invalid("a login is answered by the connection".into()))
            }
        }
    }

    /// A data request: served if this node leads the shard, else forwarded once.
    async fn data(self: &Arc<Self>, request: Request, may_forward: bool) -> Response {
        let (route, write) = match &request {
            Request::Get { route, .. } | Request::GetWithExpiry { route, .. } => (route.clone(), None),
            Request::Delete { route, key, .. } => (route.clone(), Some(key.len())),
            Request::Put { route, key, value, .. } => (route.clone(), Some(key.len() + value.len())),
            Request::Batch { route, ops, .. } => (route.clone(), Some(ops.iter().map(BatchOp::bytes).sum())),
            Request::Scan { route, .. } | Request::GetMany { route, .. } => (route.clone(), None),
            _ => return Response::Error(ProtoError::Invalid("not a data request".into())),
        };
        if let Err(e) = check_request(&request, &self.cfg) {
            return Response::Error(e);
        }
        if write.is_some() {
            if let Some(e) = disk_space::refusal(self, &route).await {
                return Response::Error(e);
            }
        }
        let timeout = Duration::from_millis(self.cfg.request_timeout_ms);
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(timeout, self.local(&request, &route)).await;
        if write.is_some() && matches!(result, Ok(Ok(_))) {
            let mut p = lock(&self.proposals);
            p.0 += 1;
            p.1 += started.elapsed().as_secs_f64();
        }
        let result = match result {
            Ok(r) => r,
            Err(_) => {
                self.with_load(route.shard, LoadRecorder::record_error);
                return Response::Error(match write {
                    Some(_) => ProtoError::OutcomeUnknown { shard: route.shard },
                    None => ProtoError::Retry("the shard did not answer in time".into()),
                });
            }
        };
        match result {
            Ok(response) => {
                self.record_load(&request, &response);
                let us = started.elapsed().as_micros() as u64;
                self.with_load(route.shard, |recorder| recorder.record_latency(us));
                response
            }
            Err(presage_replication::Error::NotLeader { shard_id, leader: Some(l) })
                if may_forward && l != self.me.id =>
            {
                match self.call(l, Request::Forwarded { request: Box::new(request) }).await {
                    Ok(answer) => Response::Redirected { leader: l, reply: Box::new(answer) },
                    Err(RpcError::Lost(_)) if write.is_some() => {
                        Response::Error(ProtoError::OutcomeUnknown { shard: shard_id })
                    }
                    Err(_) => Response::Error(ProtoError::NotLeader { shard: shard_id, leader: Some(l) }),
                }
            }
            Err(e) => {
                if is_shard_fault(&e) {
                    self.with_load(route.shard, LoadRecorder::record_error);
                }
                Response::Error(proto_error(e, write.is_some()))
            }
        }
    }

    /// A read at this node's replica: the leader's, or with `replica_read` any replica's.
    async fn read(&self, route: &Route, read: ReadRequest) -> presage_replication::Result<ReadResponse> {
        let (shard, epoch) = (route.shard, wire_epoch(route.epoch));
        match route.replica_read {
            true => self.node.replica_read(shard, epoch, read).await,
            false => self.node.read(shard, epoch, read).await,
        }
    }

    async fn local(&self, request: &Request, route: &Route) -> presage_replication::Result<Response> {
        let (shard, epoch) = (route.shard, wire_epoch(route.epoch));
        match request {
            Request::Get { key, .. } => match self.read(route, ReadRequest::Get(key.clone())).await? {
                ReadResponse::Value(value) => Ok(Response::Value { value }),
                _ => Err(presage_replication::Error::Corrupt { what: "get answer", reason: "not a value".into() }),
            },
            Request::GetWithExpiry { key, .. } => {
                match self.read(route, ReadRequest::GetWithDeadline(key.clone())).await? {
                    ReadResponse::ValueWithDeadline(found) => {
                        let (value, expires_at_ms) = found.map_or((None, None), |(v, d)| (Some(v), d));
                        Ok(Response::ValueWithExpiry { value, expires_at_ms })
                    }
                    _ => Err(presage_replication::Error::Corrupt { what: "get answer", reason: "not a value".into() }),
                }
            }
            Request::GetMany { keys, .. } => {
                let keys = keys.iter().map(|k| k.to_vec()).collect();
                let read = ReadRequest::GetMany { keys, max_bytes: MAX_GET_MANY_ANSWER_BYTES };
                match self.read(route, read).await? {
                    ReadResponse::Values(values) => Ok(Response::Values {
                        values: values.into_iter().map(|v| v.map(presage_client::proto::ByteBuf::from)).collect(),
                    }),
                    _ => Err(presage_replication::Error::Corrupt {
                        what: "get-many answer",
                        reason: "not values".into(),
                    }),
                }
            }
            Request::Put { key, value, id, .. } => {
                let ops = vec![Op::put(key.clone(), value.clone())];
                self.node.write_once(shard, epoch, ops, id.map(request_id)).await.map(|()| Response::Done)
            }
            Request::Delete { key, id, .. } => {
                let ops = vec![Op::delete(key.clone())];
                self.node.write_once(shard, epoch, ops, id.map(request_id)).await.map(|()| Response::Done)
            }
            Request::Batch { ops, id, .. } => {
                let ops = ops
                    .iter()
                    .map(|op| match op {
                        BatchOp::Put { key, value } => Op::put(key.clone(), value.clone()),
                        BatchOp::Delete { key } => Op::delete(key.clone()),
                        BatchOp::PutExpiring { key, value, ttl_ms } => {
                            let deadline = presage_replication::value::wall_now_ms().saturating_add(*ttl_ms);
                            Op::put_expiring(key.clone(), value.clone(), deadline)
                        }
                        BatchOp::PutUntil { key, value, deadline_ms } => {
                            Op::put_expiring(key.clone(), value.clone(), *deadline_ms)
                        }
                        BatchOp::Check { key, expect } => {
                            let (kind, value) = match expect {
                                Expect::Absent => (WireExpect::Absent, Vec::new()),
                                Expect::Present => (WireExpect::Present, Vec::new()),
                                Expect::Equals { value } => (WireExpect::Equals, value.clone()),
                                Expect::Exactly { value, expires_at_ms } => {
                                    return Op::check_exactly(key.clone(), value.clone(), *expires_at_ms);
                                }
                            };
                            Op::check(key.clone(), kind, value)
                        }
                    })
                    .collect();
                self.node.write_once(shard, epoch, ops, id.map(request_id)).await.map(|()| Response::Done)
            }
            Request::Scan { start, end, max_keys, max_bytes, .. } => {
                let range = KeyRange::new(start.clone(), end.clone())
                    .map_err(|e| presage_replication::Error::Corrupt { what: "scan range", reason: e.to_string() })?;
                let read = ReadRequest::Scan { range, max_keys: *max_keys as usize, max_bytes: *max_bytes as usize };
                match self.read(route, read).await? {
                    ReadResponse::Pairs { pairs, more, resume_after } => {
                        Ok(Response::Pairs { pairs, more, resume_after })
                    }
                    _ => Err(presage_replication::Error::Corrupt { what: "scan answer", reason: "not pairs".into() }),
                }
            }
            _ => Err(presage_replication::Error::Config("not a data request".into())),
        }
    }

    fn record_load(&self, request: &Request, response: &Response) {
        if let (Request::GetMany { route, keys }, Response::Values { values }) = (request, response) {
            for (key, value) in keys.iter().zip(values) {
                let bytes = key.len() + value.as_ref().map_or(0, |v| v.len());
                self.record_read_load(route.shard, KeySpan::point(key), bytes);
            }
            return;
        }
        let (shard, span, bytes, write) = match (request, response) {
            (Request::Get { route, key }, Response::Value { value })
            | (Request::GetWithExpiry { route, key }, Response::ValueWithExpiry { value, .. }) => {
                (route.shard, KeySpan::point(key), key.len() + value.as_ref().map_or(0, Vec::len), false)
            }
            (Request::Put { route, key, value, .. }, _) => {
                (route.shard, KeySpan::point(key), key.len() + value.len(), true)
            }
            (Request::Delete { route, key, .. }, _) => (route.shard, KeySpan::point(key), key.len(), true),
            (Request::Batch { route, ops, .. }, _) => match ops.first() {
                Some(first) => (route.shard, KeySpan::point(first.key()), ops.iter().map(BatchOp::bytes).sum(), true),
                None => return,
            },
            (Request::Scan { route, start, end, .. }, Response::Pairs { pairs, .. }) => {
                let bytes = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
                (
                    route.shard,
                    KeySpan { start: start.clone(), end: Some(end.clone().unwrap_or_default()) },
                    bytes,
                    false,
                )
            }
            _ => return,
        };
        self.with_load(shard, |recorder| {
            if write {
                recorder.record_write(&span.start, bytes as u64);
            } else {
                recorder.record_read(span, bytes as u64);
            }
        });
    }

    fn record_read_load(&self, shard: u64, span: KeySpan, bytes: usize) {
        self.with_load(shard, |recorder| recorder.record_read(span, bytes as u64));
    }

    /// Runs `f` on the load recorder of `shard` (made on first use).
    fn with_load(&self, shard: u64, f: impl FnOnce(&mut LoadRecorder)) {
        let mut load = lock(&self.load);
        let max_samples = self.cfg.shard_manager.max_samples_per_report;
        let seed = self.me.id << 32 ^ shard;
        f(load.entry(shard).or_insert_with(|| LoadRecorder::new(max_samples, seed)));
    }

    /// Routes, joins, heartbeats, cluster info: served by the shard manager, or forwarded once
    /// to the node believed to run it. Joins and heartbeats are never forwarded (they speak
    /// for their sender, whom only its own connection proves): their sender is told where the
    /// manager is.
    async fn manager_request(self: &Arc<Self>, request: Request, may_forward: bool) -> Response {
        if lock(&self.manager).is_some() {
            return self.manager_serve(request).await;
        }
        let hint = *lock(&self.manager_hint);
        let may_forward = may_forward && !matches!(request, Request::Join { .. } | Request::Heartbeat { .. });
        match hint {
            Some(h) if h != self.me.id && may_forward => {
                match self.call(h, Request::Forwarded { request: Box::new(request) }).await {
                    Ok(answer) => answer,
                    Err(e) => Response::Error(ProtoError::Retry(format!("shard manager on node {h}: {e}"))),
                }
            }
            Some(h) if h == self.me.id => {
                Response::Error(ProtoError::Retry("the shard manager is starting here".into()))
            }
            hint => Response::Error(ProtoError::NotManager { leader: hint }),
        }
    }

    async fn manager_serve(&self, request: Request) -> Response {
        let now = self.clock.now_ms();
        match request {
            Request::Routes { key, max_shards } => {
                let guard = lock(&self.manager);
                let Some(m) = guard.as_ref() else { return Response::Error(ProtoError::NotManager { leader: None }) };
                let shards = m.directory().iter_from(&key).take(max_shards.max(1) as usize).cloned().collect();
                Response::Routes { shards, nodes: m.nodes().cloned().collect(), read_weights: m.read_weights(now) }
            }
            Request::Heartbeat { mut heartbeat, nodes_digest: known } => {
                let (node, telemetry, backlog) =
                    (heartbeat.node, heartbeat.telemetry.take(), heartbeat.telemetry_backlog.take());
                let (mut answer, region) = {
                    let mut guard = lock(&self.manager);
                    let Some(m) = guard.as_mut() else {
                        return Response::Error(ProtoError::NotManager { leader: None });
                    };
                    let nodes =
                        if nodes_digest(m.nodes()) == known { Vec::new() } else { m.nodes().cloned().collect() };
                    let region = m.nodes().find(|n| n.id == node).map(|n| n.region.clone());
                    let answer = match m.heartbeat(heartbeat, now) {
                        Some(checks) => Response::HeartbeatAck {
                            manager: self.me.id,
                            stale: checks.stale,
                            unlisted: checks.unlisted,
                            nodes,
                            telemetry_backlog_wanted: false,
                        },
                        None => Response::Error(ProtoError::JoinRefused("unknown node: join first".into())),
                    };
                    (answer, region)
                };
                if let (Some(region), Response::HeartbeatAck { telemetry_backlog_wanted, .. }) = (region, &mut answer) {
                    let mut pfa = lock(&self.pfa);
                    // The backlog first: it ends before this heartbeat's sample.
                    let mut wake = backlog.is_some_and(|b| pfa.replay_backlog(node, &region, b));
                    if let Some(t) = telemetry {
                        wake |= pfa.on_telemetry(node, &region, t);
                    }
                    *telemetry_backlog_wanted = pfa.wants_backlog(node);
                    drop(pfa);
                    if wake {
                        self.manager_wake.notify_one();
                    }
                }
                answer
            }
            Request::Pfa { query } => {
                match (lock(&self.manager).as_ref(), &query) {
                    (None, _) => return Response::Error(ProtoError::NotManager { leader: None }),
                    (Some(m), presage_client::PfaQuery::PushCounters { node, .. })
                        if !m.nodes().any(|n| n.id == *node) =>
                    {
                        return Response::Error(ProtoError::Invalid(format!("node {node} is not in the cluster")));
                    }
                    _ => {}
                }
                if let presage_client::PfaQuery::Report { horizon_ms } = query {
                    let warnings = lock(&self.pfa).warning_spans();
                    let guard = lock(&self.manager);
                    let Some(m) = guard.as_ref() else {
                        return Response::Error(ProtoError::NotManager { leader: None });
                    };
                    let report = m.pfa_report(now, horizon_ms, &warnings);
                    return match serde_json::to_string(&report) {
                        Ok(json) => Response::Pfa { json },
                        Err(e) => Response::Error(ProtoError::Internal(e.to_string())),
                    };
                }
                if let presage_client::PfaQuery::History { node, minutes } = query {
                    let minutes = u64::from(minutes.clamp(1, pfa_store::MAX_HISTORY_ANSWER_MINUTES));
                    return match pfa_store::history(self, node, now.saturating_sub(minutes * 60_000), now).await {
                        Ok(h) => match serde_json::to_string(&h) {
                            Ok(json) => Response::Pfa { json },
                            Err(e) => Response::Error(ProtoError::Internal(e.to_string())),
                        },
                        Err(e) => Response::Error(ProtoError::Retry(format!("history: {e}"))),
                    };
                }
                match lock(&self.pfa).answer(query, now) {
                    Ok(json) => Response::Pfa { json },
                    Err(e) => Response::Error(e),
                }
            }
            Request::Join { node } => {
                // Durable before the answer: the joining node may count on it.
                let _order = self.meta_writes.lock().await;
                let (joined, writes) = {
                    let mut guard = lock(&self.manager);
                    let Some(m) = guard.as_mut() else {
                        return Response::Error(ProtoError::NotManager { leader: None });
                    };
                    let id = node.id;
                    match m.join(node, now) {
                        Ok(()) => {
                            tracing::info!(node = id, "node joined");
                            let nodes: Vec<NodeMeta> = m.nodes().cloned().collect();
                            (Ok((m.cluster().cluster_id, nodes)), m.take_writes())
                        }
                        Err(e) => (Err(e.to_string()), Vec::new()),
                    }
                };
                match joined {
                    Ok((cluster_id, nodes)) => match meta_io::persist(self, writes).await {
                        Ok(()) => Response::Joined { cluster_id, manager: self.me.id, nodes },
                        Err(e) => {
                            manager::abdicate(self, &e);
                            Response::Error(ProtoError::Retry(e.to_string()))
                        }
                    },
                    Err(why) => Response::Error(ProtoError::JoinRefused(why)),
                }
            }
            Request::Shards { start, max_shards } => {
                let guard = lock(&self.manager);
                let Some(m) = guard.as_ref() else { return Response::Error(ProtoError::NotManager { leader: None }) };
                let dir = m.directory();
                let risks = m.range_risks();
                let first = dir.get_shard(&start).map(|s| s.start.clone()).unwrap_or(start);
                let shards = dir
                    .iter()
                    .skip_while(|s| s.start < first)
                    .take(max_shards.max(1) as usize)
                    .map(|s| {
                        let soft = m.shard_soft(s.id);
                        ShardRow {
                            shard: s.clone(),
                            group: m.group_of(s.id),
                            size_bytes: soft.map_or(0, |x| x.size_bytes),
                            keys: soft.map_or(0, |x| x.keys),
                            qps: soft.map_or(0.0, |x| x.load.qps()),
                            bytes_per_sec: soft.map_or(0.0, |x| x.load.bytes_per_sec()),
                            load: soft.map_or_else(Default::default, |x| x.load),
                            risk: risks.get(&s.id).copied().unwrap_or_default(),
                        }
                    })
                    .collect();
                Response::Shards { shards }
            }
            Request::Admin { command } => {
                // Durable before the answer, like a join.
                let _order = self.meta_writes.lock().await;
                let (outcome, writes) = {
                    let mut guard = lock(&self.manager);
                    let Some(m) = guard.as_mut() else {
                        return Response::Error(ProtoError::NotManager { leader: None });
                    };
                    let outcome = m.admin(command, now);
                    (outcome, m.take_writes())
                };
                if let Err(e) = meta_io::persist(self, writes).await {
                    manager::abdicate(self, &e);
                    return Response::Error(ProtoError::Retry(e.to_string()));
                }
                match outcome {
                    Ok(o) => {
                        tracing::info!(message = %o.message, "admin command");
                        Response::Admin(o)
                    }
                    Err(AdminError::Busy(s)) => Response::Error(ProtoError::Retry(format!("shard {s} is busy"))),
                    Err(e) => Response::Error(ProtoError::Refused(e.to_string())),
                }
            }
            Request::Forecast { top } => {
                let mut guard = lock(&self.manager);
                let Some(m) = guard.as_mut() else { return Response::Error(ProtoError::NotManager { leader: None }) };
                Response::Forecast(Box::new(m.forecast_report(now, top as usize)))
            }
            Request::Capacity => {
                let mut guard = lock(&self.manager);
                let Some(m) = guard.as_mut() else { return Response::Error(ProtoError::NotManager { leader: None }) };
                Response::Capacity(Box::new(m.capacity_report(now)))
            }
            Request::ClusterInfo => {
                let guard = lock(&self.manager);
                let Some(m) = guard.as_ref() else { return Response::Error(ProtoError::NotManager { leader: None }) };
                Response::ClusterInfo(Box::new(ClusterInfo {
                    cluster_id: m.cluster().cluster_id,
                    manager: self.me.id,
                    nodes: m.nodes().cloned().collect(),
                    groups: m.groups().cloned().collect(),
                    operators: m.operators().cloned().collect(),
                    stats: m.stats(),
                    migrations: m.migrations(now),
                    node_status: m.node_status(now),
                    events: m.events(now),
                    shifts: m.shifts(),
                }))
            }
            _ => Response::Error(ProtoError::Invalid("not a shard manager request".into())),
        }
    }
}

/// Why [`Server::join`] failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JoinError {
    /// The shard manager refused the node (for good).
    #[error("join refused: {0}")]
    Refused(String),
    /// No seed got the node registered in time (no manager reachable through them yet).
    #[error("could not join within {timeout:?}: {last}")]
    TimedOut {
        /// The time allowed.
        timeout: Duration,
        /// The last answer or error.
        last: String,
    },
}
