//! What operators see of the cluster through the protocol: a shard with its load and risk
//! ([`ShardRow`]) and the whole cluster as the shard manager knows it ([`ClusterInfo`]).

use presage_shardmgr::{GroupId, GroupMeta, ManagerStats, NodeId, NodeMeta, Operator, ShardMeta};
use serde::{Deserialize, Serialize};

/// One shard as operators see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardRow {
    /// Its directory entry.
    pub shard: ShardMeta,
    /// The replication group it is placed in.
    pub group: Option<GroupId>,
    /// Approximate bytes (latest report).
    pub size_bytes: u64,
    /// Approximate keys.
    pub keys: u64,
    /// Requests per second (latest report).
    pub qps: f64,
    /// Bytes read and written per second.
    pub bytes_per_sec: f64,
    /// The same load split into reads and writes, with the leader's p99 and errors (latest
    /// report).
    #[serde(default)]
    pub load: presage_shardmgr::ShardLoad,
    /// Its risk from its replicas' nodes, p99 and errors (`presage_shardmgr::range_risk`).
    #[serde(default)]
    pub risk: presage_shardmgr::RangeRisk,
}

/// What the cluster looks like, for operators.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// The cluster's id.
    pub cluster_id: u64,
    /// The node running the shard manager.
    pub manager: NodeId,
    /// Every node.
    pub nodes: Vec<NodeMeta>,
    /// Every replication group.
    pub groups: Vec<GroupMeta>,
    /// Operators, running and recently finished.
    pub operators: Vec<Operator>,
    /// Counts.
    pub stats: ManagerStats,
    /// Node evacuations (proactive migrations and reactive repairs), running first.
    #[serde(default)]
    pub migrations: Vec<presage_shardmgr::MigrationView>,
    /// Each node's disk use, replicas, leaders and last heartbeat, as the manager knows them.
    #[serde(default)]
    pub node_status: Vec<presage_shardmgr::NodeStatus>,
    /// Known events (maintenance windows, load spikes) with their phases, by start time.
    #[serde(default)]
    pub events: Vec<presage_shardmgr::EventView>,
    /// Gradual shifts of risky ranges' leaderships off their nodes, running and recently
    /// finished (`presage_shardmgr::shift`).
    #[serde(default)]
    pub shifts: Vec<presage_shardmgr::Shift>,
}
