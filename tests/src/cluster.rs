//! An in-process cluster: `n` nodes on [`MemEngine`]s joined by a [`MemNetwork`], one shard
//! over the whole key space replicated on all of them. Run it on a current-thread tokio
//! runtime with paused time: the schedule, the network's random choices and the election
//! timeouts (`deterministic_elections`) then all follow the seed.
//!
//! `Cluster`, n nodes on `MemEngine`s over a `MemNetwork`, one shard over the key space (or
//! `start_sharded`: many); kill/restart (the engine survives like a disk), or a crash that
//! loses unsynced writes (a power loss); disk faults (each store runs on a `FaultyEngine`);
//! leader-routed put/get
//! with retries; `wait_converged` compares applied indexes and data checksums.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use presage_engine::{range_checksum, Cf, KeyRange, MemEngine, RangeChecksum};
use presage_replication::{
    Epoch, Error, MemNetwork, Node, NodeHandle, Op, RaftConfig, ReadRequest, ReadResponse, Replica, ShardDescriptor,
    Store, StoreSummary,
};
use raft::StateRole;

/// The one data shard of a test cluster.
pub const SHARD: u64 = 1;

/// Raft settings for tests: short ticks, deterministic elections.
pub fn test_config() -> RaftConfig {
    RaftConfig {
        tick_interval_ms: 10,
        election_ticks: 10,
        heartbeat_ticks: 2,
        deterministic_elections: true,
        ..RaftConfig::default()
    }
}

/// A cluster of in-process nodes.
pub struct Cluster {
    /// The network between the nodes.
    pub net: MemNetwork,
    /// Raft settings of every node.
    pub config: RaftConfig,
    engines: BTreeMap<u64, MemEngine>,
    /// Each node's disk faults (its store runs on `FaultyEngine` over its `MemEngine`).
    faults: DiskFaults,
    /// Each node's clock skew from the wall clock, ms (kept across restarts), and its clock.
    clocks: BTreeMap<u64, (i64, Arc<presage_replication::clock::GroupClock>)>,
    nodes: BTreeMap<u64, Node>,
    directory: Directory,
}

pub use crate::disks::DiskFaults;
pub use crate::disks::NodeEngine;

/// Handles of the live nodes, shared with client tasks.
pub type Directory = Arc<Mutex<BTreeMap<u64, NodeHandle>>>;

impl Cluster {
    /// Starts `n` nodes (ids `1..=n`) with shard [`SHARD`] over the whole key space.
    pub fn start(n: u64, seed: u64) -> Self {
        Self::start_with(n, seed, test_config())
    }

    /// Like [`Cluster::start`] with other Raft settings.
    pub fn start_with(n: u64, seed: u64, config: RaftConfig) -> Self {
        Self::start_sharded(n, seed, config, 1)
    }

    /// Like [`Cluster::start_with`] with `shards` shards, all on every node: shard 1 holds
    /// `["", "s0001")` (so every key of [`Cluster::put`] lands in it), shard `i` holds
    /// `["s{i-1}", "s{i}")` and the last one the rest.
    pub fn start_sharded(n: u64, seed: u64, config: RaftConfig, shards: u64) -> Self {
        assert!(shards >= 1);
        let net = MemNetwork::new(seed);
        let bound = |i: u64| format!("s{i:04}").into_bytes();
        let descriptors: Vec<ShardDescriptor> = (1..=shards)
            .map(|i| ShardDescriptor {
                id: i,
                start: if i == 1 { Vec::new() } else { bound(i - 1) },
                end: (i < shards).then(|| bound(i)),
                epoch: Some(Epoch { version: 1, conf_ver: 1 }),
                replicas: (1..=n).map(Replica::voter).collect(),
                merging_into: None,
            })
            .collect();
        let mut cluster = Cluster {
            net,
            config,
            engines: BTreeMap::new(),
            faults: DiskFaults::default(),
            clocks: BTreeMap::new(),
            nodes: BTreeMap::new(),
            directory: Directory::default(),
        };
        for id in 1..=n {
            cluster.engines.insert(id, MemEngine::new());
            let mut store = cluster.open_store(id);
            store.bootstrap_shards(descriptors.clone()).expect("bootstrap");
            cluster.spawn(id, store);
        }
        cluster
    }

    /// Opens node `id`'s store on its engine, behind a fresh fault injector (a restarted
    /// node's disk works again).
    fn open_store(&mut self, id: u64) -> Store<NodeEngine> {
        let engine = self.faults.open(id, &self.engines[&id]);
        let store = Store::open(id, engine, self.config.clone()).expect("open store");
        let skew = self.clocks.get(&id).map_or(0, |(skew, _)| *skew);
        let clock = store.clock();
        clock.set_skew_ms(skew);
        self.clocks.insert(id, (skew, clock));
        store
    }

    /// Moves node `id`'s clock `skew_ms` away from the wall clock (also after restarts).
    pub fn set_clock_skew(&mut self, id: u64, skew_ms: i64) {
        if let Some((skew, clock)) = self.clocks.get_mut(&id) {
            *skew = skew_ms;
            clock.set_skew_ms(skew_ms);
        }
    }

    /// The nodes' disk faults: inject (until a node restarts) and heal.
    pub fn disks(&self) -> &DiskFaults {
        &self.faults
    }

    fn spawn(&mut self, id: u64, store: Store<NodeEngine>) {
        let node = Node::spawn(store, self.net.transport(), &self.config);
        let handle = node.handle();
        self.lock_directory().insert(id, handle.clone());
        self.net.connect(id, Arc::new(move |env| handle.deliver(env)));
        self.nodes.insert(id, node);
    }

    fn lock_directory(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, NodeHandle>> {
        self.directory.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The shared directory of live nodes' handles.
    pub fn directory(&self) -> Directory {
        Arc::clone(&self.directory)
    }

    /// Every node id, live or not.
    pub fn all(&self) -> Vec<u64> {
        self.engines.keys().copied().collect()
    }

    /// Nodes whose loop ended on its own (a failed engine write, a panic at a failpoint):
    /// still counted as live until [`Cluster::kill`] or [`Cluster::crash`].
    pub fn finished(&self) -> Vec<u64> {
        self.nodes.iter().filter(|(_, n)| n.is_finished()).map(|(id, _)| *id).collect()
    }

    /// Ids of the running nodes.
    pub fn live(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// A handle to node `id`, if it runs.
    pub fn handle(&self, id: u64) -> Option<NodeHandle> {
        self.nodes.get(&id).map(Node::handle)
    }

    /// Node `id`'s engine (it survives kills, like a disk).
    pub fn engine(&self, id: u64) -> &MemEngine {
        &self.engines[&id]
    }

    /// Kills node `id` (its engine keeps what was written).
    pub fn kill(&mut self, id: u64) {
        self.net.disconnect(id);
        self.lock_directory().remove(&id);
        if let Some(node) = self.nodes.remove(&id) {
            node.kill();
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

    /// Starts a new, empty node `id` (no replica yet: it gets one when a leader adds it).
    pub fn add_node(&mut self, id: u64) {
        self.engines.insert(id, MemEngine::new());
        let store = self.open_store(id);
        self.spawn(id, store);
    }

    /// Restarts node `id` from its engine.
    pub fn restart(&mut self, id: u64) {
        let store = self.open_store(id);
        self.spawn(id, store);
    }

    /// Replica counts of each live node.
    pub async fn summaries(&self) -> BTreeMap<u64, StoreSummary> {
        let mut out = BTreeMap::new();
        for (id, node) in &self.nodes {
            if let Ok(s) = node.handle().summary().await {
                out.insert(*id, s);
            }
        }
        out
    }

    /// Waits (in tokio time) until every replica on every live node sleeps.
    pub async fn wait_quiescent(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let s = self.summaries().await;
            if s.values().all(|x| x.quiescent == x.replicas) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "not quiescent within {timeout:?}: {s:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Each live node's view: (node, role, term, leader).
    pub async fn views(&self) -> Vec<(u64, StateRole, u64, Option<u64>)> {
        let mut out = Vec::new();
        for (id, node) in &self.nodes {
            if let Ok(Some(s)) = node.handle().status(SHARD).await {
                out.push((*id, s.role, s.term, s.leader));
            }
        }
        out
    }

    /// The leader of the highest term among live nodes, if one claims it.
    pub async fn leader(&self) -> Option<u64> {
        let views = self.views().await;
        views.iter().filter(|v| v.1 == StateRole::Leader).max_by_key(|v| v.2).map(|v| v.0)
    }

    /// Waits (in tokio time) until a live node leads; panics after `timeout`.
    pub async fn wait_leader(&self, timeout: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader().await {
                return l;
            }
            assert!(tokio::time::Instant::now() < deadline, "no leader within {timeout:?}: {:?}", self.views().await);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The epoch clients route with.
    pub async fn epoch(&self) -> Epoch {
        for node in self.nodes.values() {
            if let Ok(Some(s)) = node.handle().status(SHARD).await {
                return s.descriptor.epoch();
            }
        }
        Epoch::default()
    }

    /// Writes through the current leader, retrying on leader changes until `timeout`.
    pub async fn write(&self, ops: Vec<Op>, timeout: Duration) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let result = match self.leader().await.and_then(|l| self.handle(l)) {
                Some(h) => {
                    let epoch = self.epoch().await;
                    match tokio::time::timeout(Duration::from_millis(500), h.write(SHARD, epoch, ops.clone())).await {
                        Ok(r) => r,
                        Err(_) => Err(Error::OutcomeUnknown { shard_id: SHARD, reason: "client timeout" }),
                    }
                }
                None => Err(Error::NotLeader { shard_id: SHARD, leader: None }),
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `put` through the leader.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        self.write(vec![Op::put(key.to_vec(), value.to_vec())], Duration::from_secs(10)).await
    }

    /// A linearizable `get` through the leader.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let result = match self.leader().await.and_then(|l| self.handle(l)) {
                Some(h) => {
                    let epoch = self.epoch().await;
                    match tokio::time::timeout(
                        Duration::from_millis(500),
                        h.read(SHARD, epoch, ReadRequest::Get(key.to_vec())),
                    )
                    .await
                    {
                        Ok(r) => r,
                        Err(_) => Err(Error::OutcomeUnknown { shard_id: SHARD, reason: "client timeout" }),
                    }
                }
                None => Err(Error::NotLeader { shard_id: SHARD, leader: None }),
            };
            match result {
                Ok(ReadResponse::Value(v)) => return Ok(v),
                Ok(other) => panic!("get answered {other:?}"),
                Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Checksum of the data on node `id`.
    pub fn data_checksum(&self, id: u64) -> RangeChecksum {
        range_checksum(self.engine(id), Cf::Data, &KeyRange::all()).expect("checksum")
    }

    /// Waits until every live node holding the shard has applied the same index and holds
    /// the same data.
    pub async fn wait_converged(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut applied = Vec::new();
            let mut sums = Vec::new();
            for (id, node) in &self.nodes {
                if let Ok(Some(s)) = node.handle().status(SHARD).await {
                    applied.push((s.applied, s.commit));
                    sums.push(self.data_checksum(*id));
                }
            }
            let same_index = applied.windows(2).all(|w| w[0].0 == w[1].0) && applied.iter().all(|(a, c)| a == c);
            if !applied.is_empty() && same_index && sums.windows(2).all(|w| w[0] == w[1]) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not converged within {timeout:?}: applied {applied:?}, sums {sums:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
