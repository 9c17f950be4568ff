//! The cluster's metadata model (design.md §1): nodes, replication groups, shards.
//!
//! These are the shard manager's own types, independent of raft-rs and the engine; the node
//! server converts the replication layer's descriptors into them. The persisted parts are
//! serde records in the meta shard ([`crate::meta`]).
//!
//! `NodeMeta` (addresses, region, capacity, state Up/Suspect/Draining/Down/ Removed, group),
//! `GroupMeta` (members one per region, failure history, risk thresholds), `ShardMeta` (range,
//! `Epoch`, replicas with roles, leader), `NodeHeartbeat`/`ShardReport`, `ClusterMeta` (cluster id,
//! replication factor, id allocator). The system key space: keys from `0xff` belong to the meta
//! shard (`META_SHARD_ID` 0), as in FoundationDB.

use serde::{Deserialize, Serialize};

use crate::load::{LoadReport, ShardLoad};

/// A node's id (also the Raft id of each of its replicas; never 0).
pub type NodeId = u64;
/// A shard's id (the meta shard is [`META_SHARD_ID`]).
pub type ShardId = u64;
/// A replication group's id (never 0).
pub type GroupId = u64;

/// The meta shard: a Raft group on the first nodes that holds the cluster's metadata.
pub const META_SHARD_ID: ShardId = 0;

/// Keys starting with this byte form the system key space, which the meta shard holds
/// (`[0xff, ∞)`). Applications may use every key below it, as in FoundationDB.
pub const SYSTEM_KEY_PREFIX: u8 = 0xff;

/// True for keys of the reserved system key space (refused from applications).
pub fn is_system_key(key: &[u8]) -> bool {
    key.first() == Some(&SYSTEM_KEY_PREFIX)
}

/// Version of a shard: `version` grows on split and merge, `conf_ver` on membership change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Epoch {
    /// Bumped by every split and merge.
    pub version: u64,
    /// Bumped by every membership change.
    pub conf_ver: u64,
}

impl Epoch {
    /// True when `self` is older than `other` in either part: a descriptor with this epoch
    /// must not replace one with `other`.
    pub fn is_stale(&self, other: &Epoch) -> bool {
        self.version < other.version || self.conf_ver < other.conf_ver
    }
}

/// A node's lifecycle state as the shard manager sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeState {
    /// Heartbeats arrive.
    #[default]
    Up,
    /// Heartbeats stopped for a few intervals: no new replicas or leaders go there.
    Suspect,
    /// The operator (or the failure module) asked to move everything off it.
    Draining,
    /// Silent for longer than `node-down-after-ms`: its replicas are to be replaced.
    Down,
    /// Gone for good; kept so its id is never reused.
    Removed,
}

impl NodeState {
    /// May new replicas and leaderships go to a node in this state?
    pub fn accepts_load(self) -> bool {
        self == NodeState::Up
    }
}

/// One node of the cluster (persisted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    /// Its id.
    pub id: NodeId,
    /// Where other nodes send Raft messages.
    pub raft_addr: String,
    /// Where clients connect (the native protocol).
    pub client_addr: String,
    /// Where Redis clients connect (empty when the node serves no RESP).
    #[serde(default)]
    pub resp_addr: String,
    /// The node's HTTP admin API (empty when it has none).
    #[serde(default)]
    pub admin_addr: String,
    /// Failure domain label; a group holds at most one node per region.
    pub region: String,
    /// Bytes of storage the node offers.
    pub capacity_bytes: u64,
    /// Requests per second it can serve as a leader (`capacity-qps`; 0: not stated), for
    /// capacity advice (`crate::capacity`).
    #[serde(default)]
    pub capacity_qps: u64,
    /// Lifecycle state.
    pub state: NodeState,
    /// The replication group it belongs to, once placed in one.
    pub group: Option<GroupId>,
    /// It runs without TLS and credentials (`--insecure`, development only).
    #[serde(default)]
    pub insecure: bool,
}

/// What a node reports about itself in a heartbeat (soft state, not persisted).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct NodeStats {
    /// Bytes the node's storage holds: every replica's data, the Raft logs, and the
    /// memtables about to be flushed.
    pub used_bytes: u64,
    /// Bytes still free.
    pub available_bytes: u64,
    /// Replicas it holds.
    pub replicas: u64,
    /// Replicas that lead.
    pub leaders: u64,
    /// The node's own disk check is handing its leaderships away (its disk stalled, slowed
    /// or failed): give it none.
    #[serde(default)]
    pub shedding_leaders: bool,
}

/// A past failure of a group member, kept for the failure model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// The node.
    pub node: NodeId,
    /// When the manager saw it (ms, manager clock).
    pub at_ms: u64,
    /// What happened.
    pub reason: String,
}

/// Risk thresholds of proactive migration (design.md §6): failure probabilities within the
/// failure model's horizon (`[shard-manager]` `risk-warn`, `risk-act`, `risk-clear`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RiskThresholds {
    /// Prepare (move leaderships away, add learners elsewhere) at or above this failure
    /// probability.
    pub warn: f64,
    /// Cut over at or above this probability.
    pub act: f64,
    /// Stand down below this probability.
    pub clear: f64,
}

/// A replication group: one node per region, hosting a family of adjacent shards (persisted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupMeta {
    /// Its id.
    pub id: GroupId,
    /// Member nodes, one per region.
    pub nodes: Vec<NodeId>,
    /// Failures of its members, oldest first (bounded by the manager).
    pub failures: Vec<FailureRecord>,
}

/// Whether a replica votes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Votes and counts toward quorum.
    Voter,
    /// Receives the log, never votes.
    Learner,
}

/// One copy of a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReplicaMeta {
    /// The node holding it.
    pub node: NodeId,
    /// Voter or learner.
    pub role: Role,
}

/// A shard as the directory knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMeta {
    /// Its id.
    pub id: ShardId,
    /// Inclusive start key.
    pub start: Vec<u8>,
    /// Exclusive end key; `None` for the last shard.
    pub end: Option<Vec<u8>>,
    /// Its epoch.
    pub epoch: Epoch,
    /// Its replicas.
    pub replicas: Vec<ReplicaMeta>,
    /// The node that leads it, as last reported (not bumped by an epoch: a cache).
    pub leader: Option<NodeId>,
    /// Set while it is frozen to merge into that shard.
    pub merging_into: Option<ShardId>,
}

impl ShardMeta {
    /// Does it hold `key`?
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|end| key < end)
    }

    /// Do the two key ranges intersect?
    pub fn overlaps(&self, other: &ShardMeta) -> bool {
        let a = other.end.as_deref().is_none_or(|e| self.start.as_slice() < e);
        let b = self.end.as_deref().is_none_or(|e| other.start.as_slice() < e);
        a && b
    }

    /// The replica on `node`, if any.
    pub fn replica(&self, node: NodeId) -> Option<&ReplicaMeta> {
        self.replicas.iter().find(|r| r.node == node)
    }

    /// Nodes holding a voter, ascending.
    pub fn voters(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.replicas.iter().filter(|r| r.role == Role::Voter).map(|r| r.node).collect();
        v.sort_unstable();
        v
    }

    /// True when it has learners.
    pub fn has_learners(&self) -> bool {
        self.replicas.iter().any(|r| r.role == Role::Learner)
    }

    /// True when `other` starts where this one ends.
    pub fn is_left_neighbour_of(&self, other: &ShardMeta) -> bool {
        self.end.as_deref() == Some(other.start.as_slice())
    }
}

/// What a node tells the shard manager about one shard it leads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardReport {
    /// The shard as its leader (the sender) sees it.
    pub shard: ShardMeta,
    /// Requests served since the last report.
    pub load: LoadReport,
    /// Approximate bytes of data.
    pub size_bytes: u64,
    /// Approximate number of keys.
    pub keys: u64,
}

/// A node's heartbeat to the shard manager, sent every `heartbeat-interval-ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeHeartbeat {
    /// The sender.
    pub node: NodeId,
    /// Its stats.
    pub stats: NodeStats,
    /// One report per shard it leads.
    pub shards: Vec<ShardReport>,
    /// Every replica it holds, with the replica's epoch (to find stale ones).
    pub replicas: Vec<(ShardId, Epoch)>,
    /// What it served for shards it does not lead (replica reads), per shard with any.
    #[serde(default)]
    pub replica_loads: Vec<(ShardId, crate::load::LoadReport)>,
    /// The telemetry agent's sample, when the node runs one.
    #[serde(default)]
    pub telemetry: Option<TelemetryReport>,
    /// The node's earlier samples, oldest first, when the manager asked for them (a new
    /// manager replays them to carry its detectors on where its predecessor left them).
    #[serde(default)]
    pub telemetry_backlog: Option<Vec<TelemetryReport>>,
}

/// One sample of a node's telemetry agent: signal name (ending with its unit) to value. Kept
/// as plain names here so that this crate (and the client library) need not know the
/// failure analysis's signal catalogue; the manager's node reads it into typed signals.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TelemetryReport {
    /// When it was taken, ms since the Unix epoch (the node's clock).
    pub at_ms: u64,
    /// Values by signal name.
    pub values: std::collections::BTreeMap<String, f64>,
}

/// Cluster-wide settings fixed at bootstrap, and the id allocator (persisted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMeta {
    /// Random id chosen at bootstrap; a node refuses to join another cluster.
    pub cluster_id: u64,
    /// Replicas per shard (one per region).
    pub replication_factor: usize,
    /// The next id to hand out for shards, groups and operators (ids below are taken).
    pub next_id: u64,
    /// An operator paused load-driven scheduling (`AdminCommand::PauseScheduler`).
    #[serde(default)]
    pub scheduler_paused: bool,
}

/// The soft state the manager keeps per shard: load, samples, timers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShardSoft {
    /// Rates from the latest report.
    pub load: ShardLoad,
    /// Approximate bytes.
    pub size_bytes: u64,
    /// Approximate keys.
    pub keys: u64,
    /// Sampled request spans of the recent reports, oldest first, with the time they came.
    pub samples: std::collections::VecDeque<(u64, Vec<crate::load::KeySpan>)>,
    /// Since when the load is above the split threshold.
    pub hot_since_ms: Option<u64>,
    /// Since when the shard is small and cold enough to merge.
    pub cold_since_ms: Option<u64>,
    /// When the manager last saw it split or be created by a split.
    pub split_at_ms: Option<u64>,
    /// When the latest report came.
    pub reported_at_ms: Option<u64>,
    /// Each follower's latest report of what it served (replica reads), with when it came;
    /// added at its rate to the leader's next report if it is recent, then cleared.
    pub replica_load: std::collections::BTreeMap<NodeId, (u64, crate::load::LoadReport)>,
}

/// Why a node is being evacuated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationCause {
    /// The failure model's risk for the node passed `risk-warn` (proactive).
    Risk,
    /// The node went down before (or without) a warning (reactive repair).
    Failed,
    /// An operator asked for it (`presage-ctl evacuate`).
    Manual,
    /// An operator decommissioned the node (`presage-ctl decommission`): once evacuated it
    /// is `Removed` for good.
    Decommission,
    /// A maintenance window (`presage-ctl events`) would leave the node's group without a
    /// quorum: its replicas move to a spare before the window; released when it closes.
    Maintenance,
}

/// Where a migration is (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationStage {
    /// Leaderships moving away, learner copies filling on the target.
    Preparing,
    /// The target replaced the node in its group; replicas are being swapped.
    CuttingOver,
    /// No replica left on the node; it is held out of groups.
    Evacuated,
    /// Finished: the risk fell back before any cut-over; the copies are dropped.
    StoodDown,
    /// Finished: the evacuated node is healthy again and may take replicas.
    Released,
}

impl MigrationStage {
    /// True once the migration will do nothing more.
    pub fn is_finished(self) -> bool {
        matches!(self, MigrationStage::StoodDown | MigrationStage::Released)
    }
}

/// One node's evacuation (persisted in the meta shard).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Migration {
    /// Its id (from the cluster's id allocator).
    pub id: u64,
    /// The node being evacuated.
    pub node: NodeId,
    /// The group it is evacuated from.
    pub group: GroupId,
    /// The healthy node that takes its place (`None` while there is no eligible one).
    pub target: Option<NodeId>,
    /// Why.
    pub cause: MigrationCause,
    /// Where it is.
    pub stage: MigrationStage,
    /// The node's risk when the migration started (`None`: unknown, e.g. a failed node).
    pub risk_at_start: Option<f64>,
    /// When it started (ms, manager clock).
    pub started_ms: u64,
    /// When the current stage began.
    pub stage_since_ms: u64,
    /// Since when the node's risk is below `risk-clear` with no warning that slows its leaders
    /// (stand-down and release timer).
    pub below_clear_since_ms: Option<u64>,
    /// Since when the node has been under an early warning that slows its leaders (its disk
    /// or links), without a break (the sustained-warning timer).
    #[serde(default)]
    pub degraded_since_ms: Option<u64>,
    /// When it finished.
    pub finished_ms: Option<u64>,
    /// Bytes of verified copies made on the target (by the shards' reported sizes).
    pub bytes_copied: u64,
    /// Shards whose copy on the target verified.
    pub shards_copied: u64,
    /// Why it waits, if it does (e.g. no eligible target).
    pub note: String,
}

impl Migration {
    /// True while the node is held: it gets no leaderships, no new replicas and no group.
    pub fn holds_node(&self) -> bool {
        !self.stage.is_finished()
    }
}

/// A migration as `presage-ctl migrations` shows it: the record plus progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationView {
    /// The record.
    #[serde(flatten)]
    pub migration: Migration,
    /// The node's current risk (`None`: unknown).
    pub risk: Option<f64>,
    /// Shards still to copy (preparing) or to move (cutting over).
    pub shards_left: usize,
    /// Their bytes, by the shards' reported sizes.
    pub bytes_left: u64,
    /// Bytes copied per second since the migration started.
    pub rate_bytes_per_sec: f64,
    /// Seconds left at that rate (`None`: nothing copied yet, or nothing left).
    pub eta_secs: Option<f64>,
    /// Its running operators: (shard, the step each is at).
    pub running: Vec<(ShardId, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_order() {
        let e = |version, conf_ver| Epoch { version, conf_ver };
        assert!(e(1, 1).is_stale(&e(2, 1)));
        assert!(e(1, 1).is_stale(&e(1, 2)));
        assert!(e(2, 1).is_stale(&e(1, 2)), "older in one part is stale");
        assert!(!e(1, 1).is_stale(&e(1, 1)));
    }

    #[test]
    fn system_keys() {
        assert!(is_system_key(b"\xffmeta"));
        assert!(!is_system_key(b"\xfe\xff"));
        assert!(!is_system_key(b""));
    }
}
