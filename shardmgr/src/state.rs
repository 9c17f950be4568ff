//! The shard manager's view of the cluster: nodes, groups, the directory and placement, each
//! shard's soft state, operators, migrations, and the failure analysis's latest inputs. The
//! [`crate::manager::Manager`] owns it and changes it; the policies ([`crate::policy`]) only
//! read it and return plans. Nothing here writes records or sends commands.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::config::ManagerConfig;
use crate::directory::Directory;
use crate::model::{
    ClusterMeta, GroupId, GroupMeta, Migration, MigrationStage, NodeId, NodeMeta, NodeState, NodeStats, ShardId,
    ShardMeta, ShardSoft, META_SHARD_ID,
};
use crate::operator::Operator;

/// Where a shard belongs and when it last split (persisted with its directory entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placement {
    pub(crate) group: GroupId,
    pub(crate) split_at_ms: Option<u64>,
}

/// The cluster as the shard manager knows it.
#[derive(Debug)]
pub(crate) struct ClusterState {
    pub(crate) cfg: ManagerConfig,
    /// When this manager started (bootstrapped or recovered).
    pub(crate) started_ms: u64,
    pub(crate) cluster: ClusterMeta,
    pub(crate) nodes: BTreeMap<NodeId, NodeMeta>,
    pub(crate) node_stats: BTreeMap<NodeId, NodeStats>,
    pub(crate) groups: BTreeMap<GroupId, GroupMeta>,
    pub(crate) directory: Directory,
    pub(crate) placement: HashMap<ShardId, Placement>,
    pub(crate) soft: HashMap<ShardId, ShardSoft>,
    pub(crate) operators: BTreeMap<u64, Operator>,
    /// Running operator of each busy shard.
    pub(crate) busy: HashMap<ShardId, u64>,
    /// Node evacuations, running and finished, by id (design.md §6).
    pub(crate) migrations: BTreeMap<u64, Migration>,
    /// The failure model's latest risk per node and per region (soft: fed every round).
    pub(crate) risks: BTreeMap<NodeId, f64>,
    pub(crate) region_risks: BTreeMap<String, f64>,
    /// Each node's round trip to its fastest peer, ms (soft; ranks migration targets).
    pub(crate) rtt_ms: BTreeMap<NodeId, f64>,
    /// Nodes whose disk the failure analysis warns about right now (soft): with proactive
    /// migration on they lead nothing.
    pub(crate) degraded: BTreeSet<NodeId>,
}

impl ClusterState {
    /// An empty cluster of `cluster`, as of `now_ms`.
    pub(crate) fn new(cfg: ManagerConfig, cluster: ClusterMeta, now_ms: u64) -> Self {
        ClusterState {
            cfg,
            started_ms: now_ms,
            cluster,
            nodes: BTreeMap::new(),
            node_stats: BTreeMap::new(),
            groups: BTreeMap::new(),
            directory: Directory::new(),
            placement: HashMap::new(),
            soft: HashMap::new(),
            operators: BTreeMap::new(),
            busy: HashMap::new(),
            migrations: BTreeMap::new(),
            risks: BTreeMap::new(),
            region_risks: BTreeMap::new(),
            rtt_ms: BTreeMap::new(),
            degraded: BTreeSet::new(),
        }
    }

    /// True when `shard` may be acted on by a new operator.
    pub(crate) fn is_free(&self, shard: &ShardMeta) -> bool {
        !self.busy.contains_key(&shard.id) && shard.merging_into.is_none() && shard.leader.is_some()
    }

    /// True for the meta shard, which never splits, merges or changes group.
    pub(crate) fn is_meta(shard: &ShardMeta) -> bool {
        shard.id == META_SHARD_ID
    }

    /// Does `node` shed its leaderships (degraded, with the predictive path on)? Then it is
    /// given none either.
    pub(crate) fn sheds_leaders(&self, node: NodeId) -> bool {
        self.cfg.proactive_migration && self.degraded.contains(&node)
    }

    /// The migration holding `node`, if any.
    pub(crate) fn migration_of(&self, node: NodeId) -> Option<&Migration> {
        self.migrations.values().find(|m| m.node == node && m.holds_node())
    }

    /// True while `node` is being evacuated (or was, and is still held).
    pub(crate) fn is_held(&self, node: NodeId) -> bool {
        self.migration_of(node).is_some()
    }

    /// Is `node` the target of a running migration (kept out of group formation)?
    pub(crate) fn is_migration_target(&self, node: NodeId) -> bool {
        self.migrations.values().any(|m| m.holds_node() && m.target == Some(node))
    }

    /// Is `node` a prepared-copy target of a migration from `group` (its learners there are
    /// not repaired away)?
    pub(crate) fn is_prepare_target(&self, group: GroupId, node: NodeId) -> bool {
        self.migrations
            .values()
            .any(|m| m.group == group && m.stage == MigrationStage::Preparing && m.target == Some(node))
    }

    /// The healthy node to take `node`'s place in `group` (design.md §6): `Up`, in no group,
    /// not held or targeted by another migration, its risk below `risk-clear` (or unknown)
    /// and its region's below `risk-warn`, in a region where no other member of the group
    /// is (any region if the cluster has fewer than the replication factor). Ranked by risk
    /// (known low first), free capacity, load (replicas held), then round trip.
    pub(crate) fn choose_target(&self, node: NodeId, group: GroupId) -> Option<NodeId> {
        let th = self.cfg.thresholds();
        let members: Vec<NodeId> = self
            .groups
            .get(&group)
            .map(|g| g.nodes.iter().copied().filter(|n| *n != node).collect())
            .unwrap_or_default();
        // The regions of the other members, and of the nodes other migrations from this
        // group will bring in.
        let incoming = self
            .migrations
            .values()
            .filter(|m| m.holds_node() && m.group == group && m.node != node)
            .filter_map(|m| m.target);
        let taken_regions: BTreeSet<&str> = members
            .iter()
            .copied()
            .chain(incoming)
            .filter_map(|n| self.nodes.get(&n))
            .map(|n| n.region.as_str())
            .collect();
        let regions_total: BTreeSet<&str> =
            self.nodes.values().filter(|n| n.state != NodeState::Removed).map(|n| n.region.as_str()).collect();
        let strict_regions = regions_total.len() >= self.cluster.replication_factor;
        let candidates = self.nodes.values().filter(|n| {
            n.id != node
                && n.state == NodeState::Up
                && n.group.is_none()
                && !self.is_migration_target(n.id)
                && !self.is_held(n.id)
                && self.risks.get(&n.id).is_none_or(|r| *r < th.clear)
                && self.region_risks.get(&n.region).is_none_or(|r| *r < th.warn)
                && (!strict_regions || !taken_regions.contains(n.region.as_str()))
        });
        candidates
            .min_by(|a, b| {
                let risk = |id: NodeId| self.risks.get(&id).copied().unwrap_or(th.clear);
                let free = |id: NodeId, cap: u64| {
                    self.node_stats
                        .get(&id)
                        .map_or(cap, |s| if s.available_bytes > 0 { s.available_bytes } else { cap })
                };
                let load = |id: NodeId| self.node_stats.get(&id).map_or(0, |s| s.replicas);
                let rtt = |id: NodeId| self.rtt_ms.get(&id).copied().unwrap_or(f64::MAX);
                risk(a.id)
                    .total_cmp(&risk(b.id))
                    .then(free(b.id, b.capacity_bytes).cmp(&free(a.id, a.capacity_bytes)))
                    .then(load(a.id).cmp(&load(b.id)))
                    .then(rtt(a.id).total_cmp(&rtt(b.id)))
                    .then(a.id.cmp(&b.id))
            })
            .map(|n| n.id)
    }
}
