//! `presage start`: one node process (design.md §7). It opens RocksDB under the data dir,
//! runs the replication node behind the peer port (Raft and the control plane, mutual TLS),
//! the node server with the native protocol for applications, the RESP listener and the
//! HTTP admin API, and joins or bootstraps the cluster. [`RunningNode::shutdown`] is the
//! graceful stop SIGTERM triggers.
//!
//! - [`config`]: the TOML configuration.
//! - [`peer`]: the peer port: TLS, the handshake, Raft and control-plane channels.
//! - [`trust`]: certificates and credentials as the listeners use them.
//!
//! **Start-up rules.** The data dir records the node id it belongs to and, once known, the
//! cluster's id (`node.json`); a different node id is refused. An empty store with
//! `bootstrap = true` starts a new cluster and makes its id; a node that does not know its
//! cluster's id joins through the `join` addresses (peer ports) and records the id; a store
//! with data restarts as the node it was. Where the other nodes are is kept in `peers.json` (rewritten when the
//! shard manager's node list changes), so that a node that restarts with every other node
//! down still finds its peers.

pub mod config;
pub mod peer;
pub mod self_check;
pub mod trust;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use presage_client::net::{Learns, NativeServer, ServeShared, TcpRpc};
use presage_client::{Client, ClientConfig, Request, Rpc, RpcError, RpcFuture};
use presage_engine::{FaultInjector, FaultyEngine, MeteredEngine, RocksEngine};
use presage_pfa::model::FailureModel;
use presage_replication::{AddressBook, NodeHandle, Store, TcpNode};
use presage_security::SecurityError;
use presage_shardmgr::{NodeId, NodeMeta, NodeState};
use serde::{Deserialize, Serialize};

use crate::admin::{self, AdminServer};
use crate::metrics::{Metrics, NodeGauges};
use crate::resp::{self, RespServer};
use crate::server::convert::bootstrap_descriptors;
use crate::server::{Clock, JoinError, Server};
use config::NodeConfig;

/// The engine a node runs: RocksDB, behind fault injection (inactive unless enabled and
/// set through the admin API) and metering.
pub type NodeEngine = MeteredEngine<FaultyEngine<RocksEngine>>;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The data dir cannot be used.
    #[error("data dir {path}: {reason}")]
    DataDir {
        /// The dir.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The storage engine failed to open.
    #[error("storage engine: {0}")]
    Engine(#[from] presage_engine::EngineError),
    /// The shipped failure model did not load.
    #[error("failure model: {0}")]
    Pfa(#[from] presage_pfa::PfaError),
    /// The replication layer failed to start.
    #[error("replication: {0}")]
    Replication(#[from] presage_replication::Error),
    /// A listener could not bind.
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The node could not join the cluster.
    #[error("join: {0}")]
    Join(String),
    /// Its certificates or credentials could not be loaded.
    #[error("security: {0}")]
    Security(#[from] SecurityError),
}

/// What the data dir says about its owner.
#[derive(Debug, Serialize, Deserialize)]
struct Identity {
    node_id: u64,
    /// The cluster it belongs to (absent until it bootstrapped or joined one).
    #[serde(default)]
    cluster_id: Option<u64>,
}

/// The node's [`Rpc`]: native TCP to other nodes, a direct call to itself; learning the
/// node list also updates the Raft transport's address book and `peers.json`.
struct NodeRpc {
    me: NodeId,
    tcp: Arc<TcpRpc>,
    raft_book: AddressBook,
    peers_file: PathBuf,
    local: Mutex<Option<presage_client::net::Handler>>,
    known: Mutex<BTreeMap<NodeId, NodeMeta>>,
    /// The node's injected network faults (set once the Raft transport runs): requests to
    /// peers take their delay and loss too.
    net_faults: std::sync::OnceLock<Arc<presage_replication::NetFaults>>,
}

impl NodeRpc {
    fn learn_quietly(&self, nodes: &[NodeMeta]) -> bool {
        let mut known = self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut changed = false;
        for n in nodes {
            if let Ok(addr) = n.raft_addr.parse::<SocketAddr>() {
                if n.id != self.me {
                    self.raft_book.set(n.id, addr);
                }
            }
            if known.get(&n.id) != Some(n) {
                known.insert(n.id, n.clone());
                changed = true;
            }
        }
        self.tcp.learn(nodes);
        changed
    }

    fn save(&self) {
        let nodes: Vec<NodeMeta> =
            self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner).values().cloned().collect();
        let tmp = self.peers_file.with_extension("json.tmp");
        let write = serde_json::to_vec_pretty(&nodes)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &self.peers_file));
        if let Err(e) = write {
            tracing::warn!(file = %self.peers_file.display(), error = %e, "could not save the peer list");
        }
    }
}

impl Rpc for NodeRpc {
    fn call(&self, to: NodeId, request: Request) -> RpcFuture {
        if to == self.me {
            let local = self.local.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            if let Some(handler) = local {
                return Box::pin(async move { Ok(handler(presage_client::Caller::Local, request).await) });
            }
        }
        match self.net_faults.get().map_or(Some(Duration::ZERO), |f| f.draw_request()) {
            // Lost on the way out: never delivered.
            None => Box::pin(async move { Err(RpcError::Unreachable(to)) }),
            Some(delay) if delay.is_zero() => self.tcp.call(to, request),
            Some(delay) => {
                let call = self.tcp.call(to, request);
                Box::pin(async move {
                    tokio::time::sleep(delay).await;
                    call.await
                })
            }
        }
    }

    fn learn(&self, nodes: &[NodeMeta]) {
        if self.learn_quietly(nodes) {
            self.save();
        }
    }
}

/// A running node.
pub struct RunningNode {
    /// Its configuration.
    pub config: NodeConfig,
    raft: TcpNode,
    peer: tokio::task::JoinHandle<()>,
    server: Server<NodeEngine>,
    native: NativeServer,
    resp: Option<RespServer>,
    admin: Option<AdminServer>,
    handle: NodeHandle,
    seeds: tokio::task::JoinHandle<()>,
    governor: tokio::task::JoinHandle<()>,
    self_check: tokio::task::JoinHandle<()>,
}

/// The migration bandwidth budget's runtime: every `snapshot-governor-window-ms`, the
/// foreground p99 of the window and the snapshot bytes sent go into a
/// [`presage_replication::RateGovernor`], whose rate is applied to the node.
async fn govern_snapshot_rate(handle: NodeHandle, metrics: Arc<Metrics>, raft: presage_replication::RaftConfig) {
    let mut governor = presage_replication::RateGovernor::new(&raft);
    let mut ticker = tokio::time::interval(Duration::from_millis(raft.snapshot_governor_window_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent_before = None;
    loop {
        ticker.tick().await;
        let Ok(summary) = handle.summary().await else { return };
        let (requests, p99_us) = metrics.take_foreground_window();
        let sent = summary.snapshot_bytes_sent;
        let Some(before) = sent_before.replace(sent) else { continue };
        let window =
            presage_replication::GovernorWindow { requests, p99_us, snapshot_bytes: sent.saturating_sub(before) };
        let action = governor.observe(window);
        if governor.rate_bytes_per_sec() != summary.snapshot_rate_bytes_per_sec {
            if action == presage_replication::GovernorAction::Decrease {
                tracing::info!(
                    p99_us,
                    baseline_p99_us = governor.baseline_p99_us().unwrap_or(0),
                    rate_bytes_per_sec = governor.rate_bytes_per_sec(),
                    "foreground p99 rose during snapshot transfers; snapshot budget lowered"
                );
            }
            if handle.set_snapshot_rate(governor.rate_bytes_per_sec()).await.is_err() {
                return;
            }
        }
    }
}

fn bind_err<'a>(what: &'static str, addr: &'a str) -> impl FnOnce(std::io::Error) -> StartError + 'a {
    move |source| StartError::Bind { what, addr: addr.to_string(), source }
}

/// Largest `node.json` read.
const MAX_IDENTITY_FILE_BYTES: u64 = 64 << 10;

/// Checks (or records) that `dir` belongs to node `id`; returns the cluster id it records.
fn claim_data_dir(dir: &Path, id: u64) -> Result<Option<u64>, StartError> {
    use std::io::Read;
    let bad = |reason: String| StartError::DataDir { path: dir.to_path_buf(), reason };
    std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
    let file = dir.join("node.json");
    match std::fs::File::open(&file) {
        Ok(f) => {
            let mut bytes = Vec::new();
            f.take(MAX_IDENTITY_FILE_BYTES).read_to_end(&mut bytes).map_err(|e| bad(e.to_string()))?;
            let identity: Identity =
                serde_json::from_slice(&bytes).map_err(|e| bad(format!("node.json is unreadable: {e}")))?;
            if identity.node_id != id {
                return Err(bad(format!("it belongs to node {}, not node {id}", identity.node_id)));
            }
            Ok(identity.cluster_id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            record_identity(dir, id, None)?;
            Ok(None)
        }
        Err(e) => Err(bad(e.to_string())),
    }
}

/// The cluster id in this node's replica of the meta shard, if it holds one with the record.
fn local_cluster_id(engine: &NodeEngine) -> Option<u64> {
    use presage_engine::Reader;
    let key = presage_shardmgr::meta::cluster_key();
    let stored = engine.get(presage_engine::Cf::Data, &key).ok()??;
    let value = presage_replication::value::decode(&key, &stored).ok()?;
    let cluster: presage_shardmgr::model::ClusterMeta = serde_json::from_slice(value.value).ok()?;
    Some(cluster.cluster_id)
}

/// Writes `node.json` (atomically) for node `id` of cluster `cluster_id`.
fn record_identity(dir: &Path, id: u64, cluster_id: Option<u64>) -> Result<(), StartError> {
    let bad = |reason: String| StartError::DataDir { path: dir.to_path_buf(), reason };
    let bytes = serde_json::to_vec(&Identity { node_id: id, cluster_id }).map_err(|e| bad(e.to_string()))?;
    let (file, tmp) = (dir.join("node.json"), dir.join("node.json.tmp"));
    std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, &file)).map_err(|e| bad(e.to_string()))
}

impl RunningNode {
    /// Starts a node with `cfg` (validated). Call inside a tokio runtime. Returns once it
    /// serves; a joining node has joined.
    /// `log_level` lets the admin API read and change the process's log filter.
    pub async fn start(
        cfg: NodeConfig,
        metrics: Arc<Metrics>,
        log_level: Option<admin::LogLevelControl>,
    ) -> Result<RunningNode, StartError> {
        cfg.validate()?;
        let id = cfg.node_id;
        let mut recorded_cluster = claim_data_dir(&cfg.data_dir, id)?;
        let trust = trust::NodeTrust::load(&cfg.security, id)?;
        if trust.insecure {
            tracing::warn!(
                node = id,
                "INSECURE node (security.insecure = true): no TLS, no users, no tokens; anyone who reaches \
                 its ports can read, write and run operator commands. For development only."
            );
        }
        let faults = Arc::new(FaultInjector::new());
        let rocks = RocksEngine::open(&cfg.data_dir.join("engine"), &cfg.rocksdb)?;
        let engine = MeteredEngine::new(FaultyEngine::new(rocks, Arc::clone(&faults)))?;
        let mut store = Store::open(id, engine.clone(), cfg.raft.clone())?;
        let fresh = store.summary().replicas == 0;
        if recorded_cluster.is_none() && !fresh {
            // A data dir from before cluster ids were recorded: the local meta replica, if any,
            // holds the cluster's record (nodes without one join to learn it).
            recorded_cluster = local_cluster_id(&engine);
            if let Some(found) = recorded_cluster {
                tracing::info!(
                    node = id,
                    cluster = format!("{found:#x}"),
                    "cluster id read from the local meta replica"
                );
                record_identity(&cfg.data_dir, id, recorded_cluster)?;
            }
        }
        if fresh && cfg.bootstrap {
            let cluster_id = rand::random::<u64>() | 1;
            tracing::info!(node = id, cluster_id = format!("{cluster_id:#x}"), "bootstrapping a new cluster");
            record_identity(&cfg.data_dir, id, Some(cluster_id))?;
            recorded_cluster = Some(cluster_id);
            store.bootstrap_shards(bootstrap_descriptors(id))?;
        }
        let cluster_id = Arc::new(AtomicU64::new(recorded_cluster.unwrap_or(0)));
        let handshake_timeout = Duration::from_millis(cfg.security.handshake_timeout_ms);
        let peer_trust =
            Arc::new(peer::PeerTrust::new(id, Arc::clone(&cluster_id), trust.tls.as_ref(), handshake_timeout)?);

        let raft_book = AddressBook::default();
        let rpc_dialer = Arc::new(peer::RpcDialer(Arc::clone(&peer_trust)));
        let tcp = Arc::new(TcpRpc::with_connector(cfg.native.clone(), rpc_dialer, None, Learns::Peer));
        let rpc = Arc::new(NodeRpc {
            me: id,
            tcp: Arc::clone(&tcp),
            raft_book: raft_book.clone(),
            peers_file: cfg.data_dir.join("peers.json"),
            local: Mutex::new(None),
            known: Mutex::new(BTreeMap::new()),
            net_faults: std::sync::OnceLock::new(),
        });
        if let Some(peers) = read_peers(&cfg.data_dir.join("peers.json")) {
            rpc.learn_quietly(&peers);
        }

        let peer_listen: SocketAddr =
            cfg.raft_listen.parse().map_err(|_| config::ConfigError::Invalid("raft-listen".into()))?;
        let peer_listener =
            tokio::net::TcpListener::bind(peer_listen).await.map_err(bind_err("the peer port", &cfg.raft_listen))?;
        let raft_dialer = Arc::new(peer::RaftDialer(Arc::clone(&peer_trust)));
        let raft = TcpNode::start_behind(store, &cfg.raft, cfg.raft_tcp.clone(), raft_book.clone(), raft_dialer)?;
        let net_faults = Arc::clone(&raft.net_faults);
        let _ = rpc.net_faults.set(Arc::clone(&net_faults));
        let handle = raft.node.handle();
        let native_listener = tokio::net::TcpListener::bind(&cfg.native_listen)
            .await
            .map_err(bind_err("the native protocol", &cfg.native_listen))?;

        let resp_listener = match cfg.resp_listen.as_str() {
            "" => None,
            addr => Some(tokio::net::TcpListener::bind(addr).await.map_err(bind_err("RESP", addr))?),
        };
        let admin_listener = match cfg.admin_listen.as_str() {
            "" => None,
            addr => Some(tokio::net::TcpListener::bind(addr).await.map_err(bind_err("the admin API", addr))?),
        };
        let local_addr = |l: &Option<tokio::net::TcpListener>| {
            l.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.to_string()).unwrap_or_default()
        };
        let me = NodeMeta {
            id,
            raft_addr: cfg.raft_advertise().to_string(),
            client_addr: cfg.native_advertise().to_string(),
            resp_addr: local_addr(&resp_listener),
            admin_addr: local_addr(&admin_listener),
            region: cfg.region.clone(),
            capacity_bytes: cfg.capacity_bytes,
            capacity_qps: cfg.capacity_qps,
            state: NodeState::Up,
            group: None,
            insecure: trust.insecure,
        };
        tcp.set_addr(id, me.raft_addr.clone());
        let server = Server::start(
            cfg.server.clone(),
            me,
            handle.clone(),
            engine.clone(),
            Arc::clone(&rpc) as Arc<dyn Rpc>,
            Clock::wall(),
            Arc::clone(&cluster_id),
        );
        let probe = engine.clone();
        server
            .set_agent(crate::agent::Agent::new(Some(Box::new(move || probe.metrics_snapshot())), Some(&cfg.data_dir)));
        let model = |path: &str, shipped: fn() -> Result<FailureModel, presage_pfa::PfaError>| {
            if path.is_empty() {
                return shipped();
            }
            let text =
                std::fs::read_to_string(path).map_err(|e| presage_pfa::PfaError::Model(format!("{path}: {e}")))?;
            FailureModel::from_json(&text).map_err(|e| presage_pfa::PfaError::Model(format!("{path}: {e}")))
        };
        let node_model = model(&cfg.server.pfa.node_model_path, presage_pfa::node_model::default_model)?;
        let disk_model = model(&cfg.server.pfa.disk_model_path, presage_pfa::disk::default_model)?;
        server.set_pfa_models(Some(node_model), Some(disk_model));
        // Requests from this node's own RESP and admin API call the server directly; only
        // requests arriving over TCP count as `native` (applications) or `peer` (nodes).
        let handler = server.handler();
        *rpc.local.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(handler.clone());
        let peer_rpc = ServeShared::new(
            metrics.native_handler(handler.clone(), "peer"),
            cfg.native.clone(),
            Arc::new(presage_client::net::NoLogins::peer()),
        );
        let peer = peer::serve(
            peer_listener,
            Arc::clone(&peer_trust),
            raft.inbound.clone(),
            peer_rpc,
            cfg.raft_tcp.max_inbound_connections,
        );
        let native_shared = ServeShared::new(
            metrics.native_handler(handler.clone(), "native"),
            cfg.native.clone(),
            trust.native_auth(),
        );
        let native = presage_client::net::serve(native_listener, native_shared, trust.client_facing_acceptor()?)
            .map_err(bind_err("the native protocol", &cfg.native_listen))?;
        tracing::info!(
            node = id,
            native = %native.local_addr(),
            peer = %cfg.raft_listen,
            tls = !trust.insecure,
            "node listening"
        );

        // Resolve the join addresses to node ids; a node that does not know its cluster
        // (new, or a data dir from before cluster ids were recorded) joins through them.
        let seed_ids = resolve_seeds(&tcp, &cfg.join, &rpc).await;
        if cluster_id.load(Ordering::SeqCst) == 0 {
            let joined = join_cluster(&server, &tcp, &rpc, &cfg, seed_ids.clone()).await?;
            record_identity(&cfg.data_dir, id, Some(joined))?;
            // Connections opened before the join carried no cluster id (hello and join only).
            tcp.reset();
            tracing::info!(node = id, cluster = format!("{joined:#x}"), "joined the cluster");
        }
        server.set_seeds(&seed_ids);
        // Keep resolving the addresses that did not answer yet (they may start later).
        let seeds = {
            let (tcp, rpc, join, server_seeds) =
                (Arc::clone(&tcp), Arc::clone(&rpc), cfg.join.clone(), server.seed_setter());
            tokio::spawn(async move {
                let mut known = seed_ids;
                while known.len() < join.len() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let ids = resolve_seeds(&tcp, &join, &rpc).await;
                    if ids.len() > known.len() {
                        known = ids;
                        server_seeds(&known);
                    }
                }
            })
        };

        let client_rpc: Arc<dyn Rpc> = Arc::clone(&rpc) as Arc<dyn Rpc>;
        let client_cfg = ClientConfig { net: cfg.native.clone(), ..ClientConfig::default() };
        let client = Arc::new(Client::new(client_rpc, vec![id], client_cfg));
        let resp_tls = trust.client_facing_acceptor()?;
        let resp = resp_listener.map(|l| {
            let auth = resp::RespAuth {
                credentials: (!trust.insecure).then(|| Arc::clone(&trust.credentials)),
                throttle: Arc::clone(&trust.throttle),
            };
            resp::serve(l, Arc::clone(&client), cfg.resp.clone(), auth, metrics.clone(), resp_tls)
        });
        let self_check_state = Arc::new(self_check::SelfCheckState {
            shedding: server.shedding_leaders_flag(),
            ..self_check::SelfCheckState::default()
        });
        let self_check = tokio::spawn(self_check::run(
            Arc::clone(engine.metrics()),
            handle.clone(),
            cfg.self_check.clone(),
            cfg.raft.tick_interval_ms,
            Arc::clone(&self_check_state),
        ));
        let gauges = gauge_probe(&handle, &server, &raft, &self_check_state, &engine);
        let readiness = readiness_probe(&handle);
        let admin_tls = trust.https_acceptor()?;
        let admin = admin_listener.map(|l| {
            admin::serve(
                l,
                admin::AdminState {
                    node: id,
                    handler: handler.clone(),
                    metrics: metrics.clone(),
                    engine_metrics: Arc::clone(engine.metrics()),
                    gauges,
                    readiness,
                    log_level,
                    auth: admin::AdminAuth {
                        credentials: (!trust.insecure).then(|| Arc::clone(&trust.credentials)),
                        open_metrics: trust.open_metrics,
                        throttle: Arc::clone(&trust.throttle),
                    },
                    faults: cfg.fault_injection.then_some(faults),
                    net_faults: cfg.fault_injection.then(|| Arc::clone(&net_faults)),
                    host_faults: cfg.fault_injection.then(|| Arc::new(crate::host_fault::HostFaults::default())),
                },
                admin_tls,
            )
        });
        let governor = tokio::spawn(govern_snapshot_rate(handle.clone(), Arc::clone(&metrics), cfg.raft.clone()));
        Ok(RunningNode { config: cfg, raft, peer, server, native, resp, admin, handle, seeds, governor, self_check })
    }

    /// The native listener's address.
    pub fn native_addr(&self) -> SocketAddr {
        self.native.local_addr()
    }

    /// True once the replication node stopped on its own (an engine error: the in-memory Raft
    /// state may be ahead of the disk). The process should then exit, fail-stop, so that a
    /// supervisor restarts it and recovery runs from what is durable.
    pub fn replication_stopped(&self) -> bool {
        self.raft.node.is_finished()
    }

    /// Graceful stop: stops taking connections, moves every leadership this node holds to
    /// another replica (the shard manager moves with the meta shard's), lets in-flight
    /// requests finish (at most `drain_timeout`), then stops.
    pub async fn shutdown(self, drain_timeout: Duration) {
        let id = self.config.node_id;
        tracing::info!(node = id, "shutting down: moving leaderships away");
        self.native.stop();
        if let Some(r) = &self.resp {
            r.stop();
        }
        let deadline = tokio::time::Instant::now() + drain_timeout;
        loop {
            let Ok(statuses) = self.handle.statuses().await else { break };
            let led: Vec<_> = statuses.iter().filter(|s| s.is_leader()).collect();
            if led.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(node = id, leaders = led.len(), "shutting down while still leading some shards");
                break;
            }
            for s in led {
                let to = s.descriptor.replicas.iter().find(|r| r.is_voter() && r.node_id != id).map(|r| r.node_id);
                if let Some(to) = to {
                    let _ = self.handle.transfer_leader(s.descriptor.id, to).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.server.drain(left.max(Duration::from_millis(100))).await;
        if let Some(a) = &self.admin {
            a.stop();
        }
        self.seeds.abort();
        self.governor.abort();
        self.self_check.abort();
        self.server.stop();
        self.peer.abort();
        drop(self.raft.server);
        self.raft.node.kill();
        tracing::info!(node = id, "stopped");
    }
}

/// How long one join round tries the seeds known so far before asking the join addresses
/// again.
const JOIN_ROUND: Duration = Duration::from_secs(2);

/// Largest `peers.json` read.
const MAX_PEERS_FILE_BYTES: u64 = 16 << 20;

/// The node list kept in `peers.json`, if it is there and readable.
fn read_peers(path: &Path) -> Option<Vec<NodeMeta>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path).ok()?.take(MAX_PEERS_FILE_BYTES).read_to_end(&mut bytes).ok()?;
    match serde_json::from_slice::<Vec<NodeMeta>>(&bytes) {
        Ok(peers) => Some(peers),
        Err(e) => {
            tracing::warn!(error = %e, "peers.json is unreadable; asking the join addresses");
            None
        }
    }
}

/// Joins through whichever join addresses answer, asking the others again each round: the
/// first to answer may be a node that is itself still joining (it knows no shard manager),
/// while the bootstrap node is still starting. Returns the cluster's id.
async fn join_cluster(
    server: &Server<NodeEngine>,
    tcp: &Arc<TcpRpc>,
    rpc: &Arc<NodeRpc>,
    cfg: &NodeConfig,
    mut ids: Vec<NodeId>,
) -> Result<u64, StartError> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(cfg.server.join_timeout_ms);
    loop {
        if ids.len() < cfg.join.len() {
            let more = resolve_seeds(tcp, &cfg.join, rpc).await;
            if more.len() > ids.len() {
                ids = more;
            }
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(StartError::Join(format!("no node reachable through {:?} registered this one", cfg.join)));
        }
        if ids.is_empty() {
            tokio::time::sleep(Duration::from_millis(200).min(left)).await;
            continue;
        }
        match server.join(&ids, JOIN_ROUND.min(left)).await {
            Ok(cluster) => return Ok(cluster),
            Err(e @ JoinError::Refused(_)) => return Err(StartError::Join(e.to_string())),
            Err(e @ JoinError::TimedOut { .. }) if left <= JOIN_ROUND => return Err(StartError::Join(e.to_string())),
            Err(JoinError::TimedOut { .. }) => {}
        }
    }
}

/// Reads this node's scrape-time gauges.
fn gauge_probe(
    handle: &NodeHandle,
    server: &Server<NodeEngine>,
    raft: &TcpNode,
    self_check: &Arc<self_check::SelfCheckState>,
    engine: &NodeEngine,
) -> admin::GaugeProbe {
    let (handle, counters, stats) = (handle.clone(), Arc::new(server.counters()), Arc::clone(&raft.stats));
    let (self_check, risk, engine) = (Arc::clone(self_check), Arc::new(server.risk_gauges()), engine.clone());
    let admission = Arc::new(server.admission_stats());
    let consistency = Arc::new(server.consistency_stats());
    let disk_refused = Arc::new(server.disk_writes_refused());
    Arc::new(move || {
        let (handle, counters, stats) = (handle.clone(), Arc::clone(&counters), Arc::clone(&stats));
        let (self_check, risk, engine) = (Arc::clone(&self_check), Arc::clone(&risk), engine.clone());
        let admission = admission();
        let consistency = consistency();
        let disk_writes_refused = disk_refused();
        Box::pin(async move {
            let statuses = handle.statuses().await.unwrap_or_default();
            let summary = handle.summary().await.ok();
            let (splits, merges, manager) = counters();
            let get = presage_replication::TcpStats::get;
            NodeGauges {
                replicas: statuses.len() as u64,
                leaders: statuses.iter().filter(|s| s.is_leader()).count() as u64,
                quiescent: statuses.iter().filter(|s| s.quiescent).count() as u64,
                splits,
                merges,
                manager,
                risk: risk(),
                storage: presage_engine::Engine::storage_stats(&engine),
                raft_frames_sent: get(&stats.frames_sent),
                raft_frames_received: get(&stats.frames_received),
                raft_frames_rejected: get(&stats.frames_rejected),
                raft_envelopes_dropped: get(&stats.envelopes_dropped),
                snapshot_rate_bytes_per_sec: summary.as_ref().map_or(0, |s| s.snapshot_rate_bytes_per_sec),
                snapshot_bytes_sent: summary.as_ref().map_or(0, |s| s.snapshot_bytes_sent),
                replica_reads_served: summary.as_ref().map_or(0, |s| s.replica_reads_served),
                self_check_shedding: self_check.shedding.load(Ordering::Relaxed),
                self_check_transfers: self_check.transfers.load(Ordering::Relaxed),
                admission_limits: admission.limits.map(|l| l as u64),
                admission_shed: admission.shed,
                admission_target_us: admission.target_us,
                consistency_checks: [consistency.consistent, consistency.mismatches, consistency.incomplete],
                inconsistent_shards: consistency.inconsistent.len() as u64,
                disk_writes_refused,
            }
        })
    })
}

/// Reads this node's readiness: its replication loop's answer about every replica here.
fn readiness_probe(handle: &NodeHandle) -> admin::ReadinessProbe {
    let handle = handle.clone();
    Arc::new(move || {
        let handle = handle.clone();
        Box::pin(async move {
            match tokio::time::timeout(admin::READY_PROBE_TIMEOUT, handle.statuses()).await {
                Ok(Ok(statuses)) => admin::Readiness::of(&statuses),
                _ => admin::Readiness::not_serving(),
            }
        })
    })
}

/// Asks each join address who it is; returns the ids that answered.
async fn resolve_seeds(tcp: &Arc<TcpRpc>, join: &[String], rpc: &Arc<NodeRpc>) -> Vec<NodeId> {
    let mut ids = Vec::new();
    for addr in join {
        match tcp.hello(addr).await {
            Ok(node) => {
                rpc.learn(std::slice::from_ref(&node));
                if node.id != rpc.me {
                    ids.push(node.id);
                }
            }
            Err(e) => tracing::debug!(addr, error = %e, "join address did not answer"),
        }
    }
    ids
}
