//! An in-process sharded cluster: node servers (`presage_server::server`) on [`MemEngine`]s,
//! joined by a [`MemNetwork`] for Raft and a [`MemRpcNet`] for requests. Node 1 bootstraps the
//! cluster (the meta shard and shard 1 over every user key); the others join through it, and
//! the shard manager gives them replicas. Run it on paused tokio time: everything follows the
//! seed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use presage_client::{Client, ClientConfig};
use presage_engine::MemEngine;
use presage_replication::{MemNetwork, Node, RaftConfig, Store};
use presage_server::server::convert::bootstrap_descriptors;
use presage_server::server::mem_rpc::MemRpcNet;
use presage_server::server::{Clock, Server, ServerConfig};
use presage_shardmgr::{Manager, ManagerConfig, NodeMeta, NodeState, ShardMeta, META_SHARD_ID};

use crate::cluster::test_config;

/// Shard manager settings for tests: fast heartbeats and rounds, small thresholds.
pub fn manager_config() -> ManagerConfig {
    ManagerConfig {
        heartbeat_interval_ms: 100,
        node_suspect_after_ms: 1_000,
        node_down_after_ms: 10_000,
        split_max_size_bytes: 256 << 10,
        split_max_keys: 1_000_000,
        merge_max_size_bytes: 16 << 10,
        merge_max_keys: 100_000,
        load_split_qps: 300.0,
        load_split_bytes_per_sec: 50e6,
        load_split_window_ms: 2_000,
        merge_delay_ms: 3_000,
        split_merge_interval_ms: 5_000,
        balance_min_leader_load_gap: 20.0,
        balance_min_size_gap_bytes: 64 << 10,
        max_balance_moves_per_minute: 600,
        operator_step_timeout_ms: 10_000,
        operator_retry_ms: 300,
        ..ManagerConfig::default()
    }
}

/// Node server settings for tests.
pub fn server_config(manager: ManagerConfig) -> ServerConfig {
    ServerConfig {
        shard_manager: manager,
        schedule_interval_ms: 100,
        request_timeout_ms: 2_000,
        rpc_timeout_ms: 2_000,
        merge_confirm_timeout_ms: 2_000,
        consistency_check_interval_ms: 1_000,
        ..ServerConfig::default()
    }
}

pub use crate::disks::DiskFaults;
pub use crate::disks::NodeEngine;

struct Running {
    node: Node,
    server: Server<NodeEngine>,
}

/// A sharded cluster of in-process node servers.
pub struct ShardedCluster {
    /// Raft messages.
    pub net: MemNetwork,
    /// Requests.
    pub rpc: MemRpcNet,
    raft: RaftConfig,
    cfg: ServerConfig,
    engines: BTreeMap<u64, MemEngine>,
    /// Each node's disk faults (its store and server run on `FaultyEngine` over its engine).
    faults: DiskFaults,
    nodes: BTreeMap<u64, Running>,
    /// One manager clock for every node (see `Clock`).
    clock: Clock,
    /// The cluster's id, as every node knows it once the first manager made it.
    cluster_id: Arc<std::sync::atomic::AtomicU64>,
    /// The run's seed (the clients' retry jitter is drawn from it).
    seed: u64,
    /// Clients made so far (each gets its own jitter seed).
    clients_made: std::sync::atomic::AtomicU64,
}

fn meta(id: u64) -> NodeMeta {
    NodeMeta {
        id,
        raft_addr: format!("mem:{id}"),
        client_addr: format!("mem:{id}"),
        resp_addr: String::new(),
        admin_addr: String::new(),
        region: format!("r{}", (id - 1) % 3 + 1),
        capacity_bytes: 1 << 30,
        capacity_qps: 0,
        state: NodeState::Up,
        group: None,
        insecure: false,
    }
}

/// Id of the clients' endpoint on the request network.
const CLIENT_ENDPOINT: u64 = u64::MAX;

impl ShardedCluster {
    /// Bootstraps node 1, then joins nodes `2..=n`; returns once the meta shard and shard 1
    /// are replicated on the first `min(n, 3)` nodes.
    pub async fn start(n: u64, seed: u64, manager: ManagerConfig) -> Self {
        let net = MemNetwork::new(seed);
        let mut c = ShardedCluster {
            rpc: MemRpcNet::new(net.clone()),
            net,
            raft: test_config(),
            cfg: server_config(manager),
            engines: BTreeMap::new(),
            faults: DiskFaults::default(),
            nodes: BTreeMap::new(),
            clock: Clock::wall(),
            cluster_id: Arc::default(),
            seed,
            clients_made: std::sync::atomic::AtomicU64::new(0),
        };
        c.engines.insert(1, MemEngine::new());
        let mut store = c.open_store(1);
        store.bootstrap_shards(bootstrap_descriptors(1)).expect("bootstrap");
        c.spawn(1, store);
        c.wait(Duration::from_secs(10), "node 1 runs the shard manager", |c| c.manager_node().is_some()).await;
        for id in 2..=n {
            c.add_node(id).await;
        }
        let rf = n.min(3);
        c.wait(Duration::from_secs(30), "the first shards are replicated", |c| {
            c.with_manager(|m| {
                [META_SHARD_ID, 1].iter().all(|id| {
                    m.directory().get(*id).is_some_and(|s| s.voters().len() as u64 == rf && !s.has_learners())
                })
            })
            .unwrap_or(false)
        })
        .await;
        // Let the first balancing moves (the meta shard's leadership, hence the manager, may
        // move) settle, so that tests start from a quiet cluster.
        c.wait_idle(Duration::from_secs(10)).await;
        c
    }

    /// Waits until one node runs the shard manager and no operator runs, twice in a row a
    /// second apart.
    pub async fn wait_idle(&self, timeout: Duration) {
        let idle = |c: &Self| c.with_manager(|m| m.stats().running_operators == 0).unwrap_or(false);
        for _ in 0..2 {
            self.wait(timeout, "an idle cluster with one shard manager", idle).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        self.wait(timeout, "an idle cluster with one shard manager", idle).await;
    }

    /// Opens node `id`'s store on its engine behind a fresh fault injector (a restarted
    /// node's disk works again).
    fn open_store(&mut self, id: u64) -> Store<NodeEngine> {
        let engine = self.faults.open(id, &self.engines[&id]);
        Store::open(id, engine, self.raft.clone()).expect("open store")
    }

    /// The Raft settings of every node.
    pub fn raft_config(&self) -> &RaftConfig {
        &self.raft
    }

    /// The nodes' disk faults: inject (until a node restarts) and heal.
    pub fn disks(&self) -> &DiskFaults {
        &self.faults
    }

    /// Nodes whose replication loop ended on its own (fail-stop after a disk fault); still
    /// listed as live until killed or crashed.
    pub fn finished(&self) -> Vec<u64> {
        self.nodes.iter().filter(|(_, r)| r.node.is_finished()).map(|(id, _)| *id).collect()
    }

    fn spawn(&mut self, id: u64, store: Store<NodeEngine>) {
        let node = Node::spawn(store, self.net.transport(), &self.raft);
        let handle = node.handle();
        let deliver = node.handle();
        self.net.connect(id, Arc::new(move |env| deliver.deliver(env)));
        let server = Server::start(
            self.cfg.clone(),
            meta(id),
            handle,
            self.faults.current(id, &self.engines[&id]),
            Arc::new(self.rpc.endpoint(id)),
            self.clock.clone(),
            Arc::clone(&self.cluster_id),
        );
        self.rpc.register(id, server.handler());
        self.nodes.insert(id, Running { node, server });
    }

    /// Starts an empty node `id` and joins it through node 1 (or any live node).
    pub async fn add_node(&mut self, id: u64) {
        self.engines.insert(id, MemEngine::new());
        let store = self.open_store(id);
        self.spawn(id, store);
        let seeds: Vec<u64> = self.nodes.keys().copied().filter(|n| *n != id).collect();
        let joined = self.nodes[&id].server.join(&seeds, Duration::from_secs(30)).await;
        joined.unwrap_or_else(|e| panic!("node {id} could not join: {e}"));
    }

    /// Kills node `id` (its engine keeps what was written).
    pub fn kill(&mut self, id: u64) {
        self.net.disconnect(id);
        self.rpc.unregister(id);
        if let Some(r) = self.nodes.remove(&id) {
            r.server.stop();
            r.node.kill();
        }
    }

    /// Kills node `id` in a power loss: its engine keeps what was synced plus a random
    /// prefix of the writes made since ([`crate::disks::lose_power`]).
    pub fn crash(&mut self, id: u64, rng: &mut impl rand::Rng) -> crate::disks::PowerLoss {
        self.kill(id);
        let (recovered, loss) = crate::disks::lose_power(&self.engines[&id], rng);
        self.engines.insert(id, recovered);
        loss
    }

    /// Restarts node `id` from its engine; it knows the other nodes as seeds (as a node's
    /// configuration would list them).
    pub fn restart(&mut self, id: u64) {
        let store = self.open_store(id);
        self.spawn(id, store);
        let seeds: Vec<u64> = self.engines.keys().copied().filter(|n| *n != id).collect();
        self.nodes[&id].server.set_seeds(&seeds);
    }

    /// Ids of the running nodes.
    pub fn live(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// The node running the shard manager; `None` while none does, or while a deposed one
    /// has not noticed yet (two claim it).
    pub fn manager_node(&self) -> Option<u64> {
        let mut claims = self.nodes.iter().filter(|(_, r)| r.server.is_manager()).map(|(id, _)| *id);
        let first = claims.next();
        if claims.next().is_some() {
            return None;
        }
        first
    }

    /// Runs `f` on the shard manager, wherever it runs.
    pub fn with_manager<T>(&self, f: impl FnOnce(&mut Manager) -> T) -> Option<T> {
        let id = self.manager_node()?;
        self.nodes[&id].server.with_manager(f)
    }

    /// Submits an operator to the shard manager, as `presage-ctl` would.
    pub fn submit(
        &self,
        shard: u64,
        steps: Vec<presage_shardmgr::Step>,
        rollback: Vec<presage_shardmgr::Step>,
    ) -> Option<u64> {
        let id = self.manager_node()?;
        let server = &self.nodes[&id].server;
        let now = server.now_ms();
        server.with_manager(|m| m.submit(shard, steps, rollback, now)).flatten()
    }

    /// Runs an admin command on the shard manager, as `presage-ctl` would.
    pub fn admin(
        &self,
        command: presage_shardmgr::AdminCommand,
    ) -> Option<Result<presage_shardmgr::AdminOutcome, presage_shardmgr::AdminError>> {
        let id = self.manager_node()?;
        let server = &self.nodes[&id].server;
        let now = server.now_ms();
        server.with_manager(|m| m.admin(command, now))
    }

    /// Node `id`'s engine (it survives kills, like a disk).
    pub fn engine(&self, id: u64) -> &MemEngine {
        &self.engines[&id]
    }

    /// What node `id`'s consistency checker found so far (`None` while it is down).
    pub fn consistency(&self, id: u64) -> Option<presage_server::server::consistency::ConsistencyStats> {
        self.nodes.get(&id).map(|r| r.server.consistency_stats()())
    }

    /// The manager's directory, in key order.
    pub fn directory(&self) -> Vec<ShardMeta> {
        self.with_manager(|m| m.directory().iter().cloned().collect()).unwrap_or_default()
    }

    /// A client that asks `seeds` first; every second client made reads from any replica
    /// (`replica_reads`).
    pub fn client(&self, seeds: Vec<u64>) -> Client {
        // Seeded retry jitter: a run replays exactly from its seed.
        let n = self.clients_made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cfg = ClientConfig {
            request_timeout_ms: 20_000,
            attempt_timeout_ms: 2_000,
            jitter_seed: Some(self.seed.wrapping_mul(1_000_003).wrapping_add(n)),
            replica_reads: n % 2 == 1,
            ..ClientConfig::default()
        };
        Client::new(Arc::new(self.rpc.endpoint(CLIENT_ENDPOINT)), seeds, cfg)
    }

    /// Waits (tokio time) until `check` holds; panics with `what` after `timeout`.
    pub async fn wait(&self, timeout: Duration, what: &str, check: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !check(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {timeout:?}; directory {:?}",
                self.directory()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
