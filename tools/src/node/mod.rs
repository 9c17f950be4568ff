//! `presage start`: one node process (design.md §7). It opens RocksDB under the data dir,
//! runs the replication node with its TCP transport, the node server with the native
//! protocol over TCP, the RESP listener and the HTTP admin API, and joins or bootstraps the
//! cluster. [`RunningNode::shutdown`] is the graceful stop SIGTERM triggers.
//!
//! - [`config`]: the TOML configuration.
//! - [`playground`]: `presage playground`, a local cluster of node processes.
//!
//! **Start-up rules.** The data dir records the node id it belongs to (`node.json`); a
//! different id is refused. An empty store with `bootstrap = true` starts a new cluster;
//! an empty store without it joins through the `join` addresses; a store with data restarts
//! as the node it was. Where the other nodes are is kept in `peers.json` (rewritten when the
//! shard manager's node list changes), so that a node that restarts with every other node
//! down still finds its peers.

pub mod config;
pub mod playground;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use presage_client::net::{NativeServer, TcpRpc};
use presage_client::{Client, ClientConfig, Request, Rpc, RpcFuture};
use presage_engine::{FaultInjector, FaultyEngine, MeteredEngine, RocksEngine};
use presage_pfa::model::FailureModel;
use presage_replication::{AddressBook, NodeHandle, Store, TcpNode};
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
}

/// What the data dir says about its owner.
#[derive(Debug, Serialize, Deserialize)]
struct Identity {
    node_id: u64,
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
                return Box::pin(async move { Ok(handler(request).await) });
            }
        }
        self.tcp.call(to, request)
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
    server: Server<NodeEngine>,
    native: NativeServer,
    resp: Option<RespServer>,
    admin: Option<AdminServer>,
    handle: NodeHandle,
    seeds: tokio::task::JoinHandle<()>,
    governor: tokio::task::JoinHandle<()>,
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

/// Checks (or records) that `dir` belongs to node `id`.
fn claim_data_dir(dir: &Path, id: u64) -> Result<(), StartError> {
    let bad = |reason: String| StartError::DataDir { path: dir.to_path_buf(), reason };
    std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
    let file = dir.join("node.json");
    match std::fs::read(&file) {
        Ok(bytes) => {
            let identity: Identity =
                serde_json::from_slice(&bytes).map_err(|e| bad(format!("node.json is unreadable: {e}")))?;
            if identity.node_id != id {
                return Err(bad(format!("it belongs to node {}, not node {id}", identity.node_id)));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let bytes = serde_json::to_vec(&Identity { node_id: id }).map_err(|e| bad(e.to_string()))?;
            std::fs::write(&file, bytes).map_err(|e| bad(e.to_string()))
        }
        Err(e) => Err(bad(e.to_string())),
    }
}

impl RunningNode {
    /// Starts a node with `cfg` (validated). Call inside a tokio runtime. Returns once it
    /// serves; a joining node has joined.
    pub async fn start(cfg: NodeConfig, metrics: Arc<Metrics>) -> Result<RunningNode, StartError> {
        cfg.validate()?;
        let id = cfg.node_id;
        claim_data_dir(&cfg.data_dir, id)?;
        let faults = Arc::new(FaultInjector::new());
        let rocks = RocksEngine::open(&cfg.data_dir.join("engine"), &cfg.rocksdb)?;
        let engine = MeteredEngine::new(FaultyEngine::new(rocks, Arc::clone(&faults)))?;
        let mut store = Store::open(id, engine.clone(), cfg.raft.clone())?;
        let fresh = store.summary().replicas == 0;
        if fresh && cfg.bootstrap {
            tracing::info!(node = id, "bootstrapping a new cluster");
            store.bootstrap_shards(bootstrap_descriptors(id))?;
        }

        let raft_book = AddressBook::default();
        let tcp = Arc::new(TcpRpc::new(cfg.native.clone()));
        let rpc = Arc::new(NodeRpc {
            me: id,
            tcp: Arc::clone(&tcp),
            raft_book: raft_book.clone(),
            peers_file: cfg.data_dir.join("peers.json"),
            local: Mutex::new(None),
            known: Mutex::new(BTreeMap::new()),
        });
        if let Ok(bytes) = std::fs::read(cfg.data_dir.join("peers.json")) {
            match serde_json::from_slice::<Vec<NodeMeta>>(&bytes) {
                Ok(peers) => {
                    rpc.learn_quietly(&peers);
                }
                Err(e) => tracing::warn!(error = %e, "peers.json is unreadable; asking the join addresses"),
            }
        }

        let raft_listen: SocketAddr =
            cfg.raft_listen.parse().map_err(|_| config::ConfigError::Invalid("raft-listen".into()))?;
        let raft = TcpNode::start(store, &cfg.raft, cfg.raft_tcp.clone(), raft_listen, raft_book.clone()).await?;
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
            state: NodeState::Up,
            group: None,
        };
        tcp.set_addr(id, me.client_addr.clone());
        let server = Server::start(
            cfg.server.clone(),
            me,
            handle.clone(),
            engine.clone(),
            Arc::clone(&rpc) as Arc<dyn Rpc>,
            Clock::wall(),
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
        let node_model = model(&cfg.server.pfa.node_model_path, presage_pfa::node::default_model)?;
        let disk_model = model(&cfg.server.pfa.disk_model_path, presage_pfa::disk::default_model)?;
        server.set_pfa_models(Some(node_model), Some(disk_model));
        // Requests from this node's own RESP and admin API call the server directly; only
        // requests arriving over TCP count as `native` in the metrics.
        let handler = server.handler();
        *rpc.local.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(handler.clone());
        let native =
            presage_client::net::serve(native_listener, metrics.native_handler(handler.clone()), cfg.native.clone())
                .map_err(bind_err("the native protocol", &cfg.native_listen))?;
        tracing::info!(node = id, native = %native.local_addr(), raft = %cfg.raft_listen, "node listening");

        // Resolve the join addresses to node ids; a new node joins through them.
        let seed_ids = resolve_seeds(&tcp, &cfg.join, &rpc).await;
        if fresh && !cfg.bootstrap {
            // Join through whichever join addresses answer, asking the others again each
            // round: the first to answer may be a node that is itself still joining (it
            // knows no shard manager), while the bootstrap node is still starting.
            let deadline = tokio::time::Instant::now() + Duration::from_millis(cfg.server.join_timeout_ms);
            let mut ids = seed_ids.clone();
            let cluster = loop {
                if ids.len() < cfg.join.len() {
                    let more = resolve_seeds(&tcp, &cfg.join, &rpc).await;
                    if more.len() > ids.len() {
                        ids = more;
                    }
                }
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return Err(StartError::Join(format!(
                        "no node reachable through {:?} registered this one",
                        cfg.join
                    )));
                }
                if ids.is_empty() {
                    tokio::time::sleep(Duration::from_millis(200).min(left)).await;
                    continue;
                }
                match server.join(&ids, JOIN_ROUND.min(left)).await {
                    Ok(cluster) => break cluster,
                    Err(e @ JoinError::Refused(_)) => return Err(StartError::Join(e.to_string())),
                    Err(e @ JoinError::TimedOut { .. }) if left <= JOIN_ROUND => {
                        return Err(StartError::Join(e.to_string()))
                    }
                    Err(JoinError::TimedOut { .. }) => {}
                }
            };
            tracing::info!(node = id, cluster, "joined the cluster");
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
        let resp = resp_listener
            .map(|l| resp::serve(l, Arc::clone(&client), cfg.resp.clone(), cfg.resp_password.clone(), metrics.clone()));
        let gauges: admin::GaugeProbe = {
            let (handle, counters, stats) = (handle.clone(), Arc::new(server.counters()), Arc::clone(&raft.stats));
            Arc::new(move || {
                let (handle, counters, stats) = (handle.clone(), Arc::clone(&counters), Arc::clone(&stats));
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
                        raft_frames_sent: get(&stats.frames_sent),
                        raft_frames_received: get(&stats.frames_received),
                        raft_frames_rejected: get(&stats.frames_rejected),
                        raft_envelopes_dropped: get(&stats.envelopes_dropped),
                        snapshot_rate_bytes_per_sec: summary.as_ref().map_or(0, |s| s.snapshot_rate_bytes_per_sec),
                        snapshot_bytes_sent: summary.as_ref().map_or(0, |s| s.snapshot_bytes_sent),
                    }
                })
            })
        };
        let admin = admin_listener.map(|l| {
            admin::serve(
                l,
                admin::AdminState {
                    node: id,
                    handler: handler.clone(),
                    metrics: metrics.clone(),
                    engine_metrics: Arc::clone(engine.metrics()),
                    gauges,
                    token: cfg.admin_token.clone(),
                    faults: cfg.fault_injection.then_some(faults),
                },
            )
        });
        let governor = tokio::spawn(govern_snapshot_rate(handle.clone(), Arc::clone(&metrics), cfg.raft.clone()));
        Ok(RunningNode { config: cfg, raft, server, native, resp, admin, handle, seeds, governor })
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
        self.server.stop();
        drop(self.raft.server);
        self.raft.node.kill();
        tracing::info!(node = id, "stopped");
    }
}

/// Asks each join address who it is; returns the ids that answered.
/// How long one join round tries the seeds known so far before asking the join addresses
/// again.
const JOIN_ROUND: Duration = Duration::from_secs(2);

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
