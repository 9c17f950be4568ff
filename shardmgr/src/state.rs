//! The shard manager's view of the cluster: nodes, groups, the directory and placement, each
//! shard's soft state, operators, migrations, and the failure analysis's latest inputs.
//!
//! Its fields are private. Readers (the policies in [`crate::policy`], the admin commands,
//! the manager's reports) go through the query methods below; the policies hold only a
//! `&ClusterState`, so they cannot change it. The [`crate::manager::Manager`] changes it
//! through the `&mut` methods: every change to a durable record (node, group, shard
//! placement, operator, migration, cluster counter) returns the [`MetaWrite`] that persists
//! it (`#[must_use]`, so a record cannot be changed and silently left unpersisted); soft
//! state (load, risks, leader hints, busy shards) is rebuilt from reports and persists
//! nothing. Nothing here sends commands or reads a clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::config::ManagerConfig;
use crate::directory::Directory;
use crate::events::{EventKind, KnownEvent, MaintenanceScope};
use crate::forecast::{Forecast, Series};
use crate::meta::{self, MetaWrite, PersistedState, ShardRecord};
use crate::model::{
    ClusterMeta, GroupId, GroupMeta, Migration, MigrationStage, NodeId, NodeMeta, NodeState, NodeStats, ShardId,
    ShardMeta, ShardSoft, META_SHARD_ID,
};
use crate::operator::{Operator, Poll};
use crate::shift::Shift;

mod shifts;

/// Where a shard belongs and when it last split (persisted with its directory entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placement {
    pub(crate) group: GroupId,
    pub(crate) split_at_ms: Option<u64>,
}

/// The cluster as the shard manager knows it.
#[derive(Debug)]
pub(crate) struct ClusterState {
    cfg: ManagerConfig,
    /// When this manager started (bootstrapped or recovered).
    started_ms: u64,
    cluster: ClusterMeta,
    nodes: BTreeMap<NodeId, NodeMeta>,
    node_stats: BTreeMap<NodeId, NodeStats>,
    groups: BTreeMap<GroupId, GroupMeta>,
    directory: Directory,
    placement: HashMap<ShardId, Placement>,
    soft: HashMap<ShardId, ShardSoft>,
    operators: BTreeMap<u64, Operator>,
    /// Running operator of each busy shard.
    busy: HashMap<ShardId, u64>,
    /// Node evacuations, running and finished, by id (design.md §6).
    migrations: BTreeMap<u64, Migration>,
    /// The failure model's latest risk per node and per region (soft: fed every round).
    risks: BTreeMap<NodeId, f64>,
    region_risks: BTreeMap<String, f64>,
    /// Each node's round trip to its fastest peer, ms (soft; ranks migration targets).
    rtt_ms: BTreeMap<NodeId, f64>,
    /// Nodes whose disk the failure analysis warns about right now (soft): with proactive
    /// migration on they lead nothing.
    degraded: BTreeSet<NodeId>,
    /// Known events by id (`crate::events`).
    events: BTreeMap<u64, KnownEvent>,
    /// Nodes of a maintenance window preparing or open (derived each round,
    /// [`ClusterState::set_event_nodes`]): they lead nothing.
    maintenance: BTreeSet<NodeId>,
    /// Nodes whose being down is excused by a maintenance window (derived each round).
    excused: BTreeSet<NodeId>,
    /// Each shard's load history (soft; `crate::forecast`).
    series: HashMap<ShardId, Series>,
    /// A split parent's history part for its right half, until that half reports (by parent).
    split_rest: HashMap<ShardId, Series>,
    /// Shards whose history changed since it was last persisted (or that lost it).
    history_dirty: BTreeSet<ShardId>,
    /// Gradual shifts of risky leaderships, by node (soft; `crate::shift`), finished ones
    /// kept for a period.
    shifts: BTreeMap<NodeId, Shift>,
    /// The ranges whose leadership may be shifted now, by leader (derived each round).
    demotable: BTreeMap<NodeId, Vec<(ShardId, NodeId)>>,
    /// The feedback loop's eagerness (set each round).
    eagerness: Eagerness,
    /// When each shard's leadership was last moved to balance load (soft: the hold).
    balance_moved_ms: HashMap<ShardId, u64>,
}

/// How eager the policies are, from the feedback loop (`crate::feedback`): thresholds are
/// divided and paces multiplied by these, each in (0, 1]; set every round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Eagerness {
    /// Leaderships a degraded node sheds per round.
    pub(crate) shed: f64,
    /// Splits ahead of forecast load.
    pub(crate) presplit: f64,
    /// Proactive evacuations (`risk-warn`).
    pub(crate) evacuation: f64,
}

impl Default for Eagerness {
    fn default() -> Self {
        Eagerness { shed: 1.0, presplit: 1.0, evacuation: 1.0 }
    }
}

/// What the failure analysis tells the manager each round ([`crate::Manager::set_risks`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RiskInputs {
    /// Each node's probability of failing within the model's horizon; nodes missing have
    /// no estimate (no model, or no telemetry yet).
    pub nodes: BTreeMap<NodeId, f64>,
    /// Each region's probability that a node of it fails within the horizon.
    pub regions: BTreeMap<String, f64>,
    /// Each node's latest round trip to its fastest peer, ms (ranks migration targets).
    pub rtt_ms: BTreeMap<NodeId, f64>,
    /// Nodes with an active early warning that slows every request they serve (a degrading
    /// or failing disk). A leader's disk is on every write's and read's path while a
    /// follower's is not (the other voters make the quorum), so with proactive migration on
    /// the manager moves their leaderships away at once - long before the risk reaches
    /// `warn` - and gives them none until the warning clears. Their replicas stay.
    pub degraded: BTreeSet<NodeId>,
}

/// Queries.
impl ClusterState {
    /// The manager's settings.
    pub(crate) fn cfg(&self) -> &ManagerConfig {
        &self.cfg
    }

    /// When this manager started (bootstrapped or recovered).
    pub(crate) fn started_ms(&self) -> u64 {
        self.started_ms
    }

    /// The cluster record.
    pub(crate) fn cluster(&self) -> &ClusterMeta {
        &self.cluster
    }

    /// A known node.
    pub(crate) fn node(&self, id: NodeId) -> Option<&NodeMeta> {
        self.nodes.get(&id)
    }

    /// Known nodes (any state), by id.
    pub(crate) fn nodes(&self) -> impl Iterator<Item = &NodeMeta> + '_ {
        self.nodes.values()
    }

    /// A replication group.
    pub(crate) fn group(&self, id: GroupId) -> Option<&GroupMeta> {
        self.groups.get(&id)
    }

    /// Replication groups, by id.
    pub(crate) fn groups(&self) -> impl Iterator<Item = &GroupMeta> + '_ {
        self.groups.values()
    }

    /// The directory.
    pub(crate) fn directory(&self) -> &Directory {
        &self.directory
    }

    /// Where `shard` belongs.
    pub(crate) fn placement(&self, shard: ShardId) -> Option<Placement> {
        self.placement.get(&shard).copied()
    }

    /// The group `shard` belongs to.
    pub(crate) fn group_of(&self, shard: ShardId) -> Option<GroupId> {
        self.placement.get(&shard).map(|p| p.group)
    }

    /// A shard's soft state (load, size, timers), if it reported.
    pub(crate) fn soft(&self, shard: ShardId) -> Option<&ShardSoft> {
        self.soft.get(&shard)
    }

    /// An operator, running or finished.
    pub(crate) fn operator(&self, id: u64) -> Option<&Operator> {
        self.operators.get(&id)
    }

    /// Operators, running and finished, by id.
    pub(crate) fn operators(&self) -> impl Iterator<Item = &Operator> + '_ {
        self.operators.values()
    }

    /// Does an unfinished operator hold `shard`?
    pub(crate) fn is_busy(&self, shard: ShardId) -> bool {
        self.busy.contains_key(&shard)
    }

    /// A migration, running or finished.
    pub(crate) fn migration(&self, id: u64) -> Option<&Migration> {
        self.migrations.get(&id)
    }

    /// Migrations, running and finished, by id.
    pub(crate) fn migrations(&self) -> impl Iterator<Item = &Migration> + '_ {
        self.migrations.values()
    }

    /// The failure model's latest risk for `node` (`None`: no estimate).
    pub(crate) fn risk(&self, node: NodeId) -> Option<f64> {
        self.risks.get(&node).copied()
    }

    /// Nodes whose disk the failure analysis warns about right now.
    pub(crate) fn degraded(&self) -> &BTreeSet<NodeId> {
        &self.degraded
    }
}

/// Construction and derived queries.
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
            events: BTreeMap::new(),
            maintenance: BTreeSet::new(),
            excused: BTreeSet::new(),
            series: HashMap::new(),
            split_rest: HashMap::new(),
            history_dirty: BTreeSet::new(),
            shifts: BTreeMap::new(),
            demotable: BTreeMap::new(),
            eagerness: Eagerness::default(),
            balance_moved_ms: HashMap::new(),
        }
    }

    /// The state a previous manager persisted (the cluster record taken out of `state` by
    /// the caller), as of `now_ms`. Soft state starts empty; the busy shards are those of
    /// the unfinished operators.
    pub(crate) fn recover(cfg: ManagerConfig, cluster: ClusterMeta, state: PersistedState, now_ms: u64) -> Self {
        let mut st = ClusterState::new(cfg, cluster, now_ms);
        st.nodes = state.nodes.into_iter().map(|n| (n.id, n)).collect();
        st.groups = state.groups.into_iter().map(|g| (g.id, g)).collect();
        for rec in state.shards {
            st.placement.insert(rec.shard.id, Placement { group: rec.group, split_at_ms: rec.split_at_ms });
            st.directory.update(rec.shard);
        }
        st.operators = state.operators.into_iter().map(|op| (op.id, op)).collect();
        st.rebuild_busy();
        st.migrations = state.migrations.into_iter().map(|x| (x.id, x)).collect();
        st.events = state.events.into_iter().map(|e| (e.id, e)).collect();
        let (steps, season) = st.cfg.forecast_steps();
        let max_points = st.cfg.forecast_max_points;
        for r in &state.histories {
            st.series.insert(r.shard, Series::from_record(r, max_points, season, steps));
        }
        st
    }

    /// True when `shard` may be acted on by a new operator.
    pub(crate) fn is_free(&self, shard: &ShardMeta) -> bool {
        !self.busy.contains_key(&shard.id) && shard.merging_into.is_none() && shard.leader.is_some()
    }

    /// True for the meta shard, which never splits, merges or changes group.
    pub(crate) fn is_meta(shard: &ShardMeta) -> bool {
        shard.id == META_SHARD_ID
    }

    /// Does `node` shed its leaderships (degraded, with the predictive path on, or its own
    /// disk check says so, or a maintenance window is near)? Then it is given none either.
    pub(crate) fn sheds_leaders(&self, node: NodeId) -> bool {
        let own_check = self.node_stats.get(&node).is_some_and(|s| s.shedding_leaders);
        own_check || self.maintenance.contains(&node) || (self.cfg.proactive_migration && self.degraded.contains(&node))
    }

    /// Is `node` in a maintenance window that is preparing or open (it leads nothing)?
    pub(crate) fn in_maintenance(&self, node: NodeId) -> bool {
        self.maintenance.contains(&node)
    }

    /// Nodes in a maintenance window that is preparing or open.
    pub(crate) fn maintenance(&self) -> &BTreeSet<NodeId> {
        &self.maintenance
    }

    /// Is `node`'s being down excused by a maintenance window (no failure, no replacement)?
    pub(crate) fn down_excused(&self, node: NodeId) -> bool {
        self.excused.contains(&node)
    }

    /// `shard`'s load forecast over the horizon at `now_ms` (`crate::forecast`); from the
    /// latest report alone while it has no history.
    pub(crate) fn forecast(&self, shard: ShardId, now_ms: u64) -> Forecast {
        let interval = self.cfg.forecast_interval_ms;
        let (_, season) = self.cfg.forecast_steps();
        // The first forecast bucket is the one open now (the refit ran when the last closed).
        let open_bucket_ms = now_ms - now_ms % interval;
        let reported = self.soft(shard).map_or(0.0, |x| self.heat(&x.load));
        match self.series.get(&shard) {
            Some(series) => {
                let now = series.current().unwrap_or(reported);
                let seasonal = season >= 2 && series.len() >= 2 * season;
                Forecast::from_buckets(now, series.ahead(), open_bucket_ms, interval, series.len(), seasonal)
            }
            None => Forecast::from_buckets(reported, std::iter::empty(), open_bucket_ms, interval, 0, false),
        }
    }

    /// The highest load `shard` is forecast to carry over the next season (0 without enough
    /// history): what keeps a range hot every day split between its peaks.
    pub(crate) fn season_peak(&self, shard: ShardId) -> f64 {
        self.series.get(&shard).map_or(0.0, Series::season_peak)
    }

    /// `shard`'s load now and its forecast buckets (empty without enough history).
    pub(crate) fn forecast_values(&self, shard: ShardId) -> (f64, Vec<f64>) {
        let reported = self.soft(shard).map_or(0.0, |x| self.heat(&x.load));
        match self.series.get(&shard) {
            Some(s) => (s.current().unwrap_or(reported), s.ahead().collect()),
            None => (reported, Vec::new()),
        }
    }

    /// Known events by id.
    pub(crate) fn events(&self) -> impl Iterator<Item = &KnownEvent> + '_ {
        self.events.values()
    }

    /// A known event.
    pub(crate) fn event(&self, id: u64) -> Option<&KnownEvent> {
        self.events.get(&id)
    }

    /// The nodes a maintenance event covers now (its node, or its region's nodes that are not
    /// removed); none for a spike.
    pub(crate) fn event_nodes(&self, e: &KnownEvent) -> Vec<NodeId> {
        match &e.what {
            EventKind::Maintenance { scope: MaintenanceScope::Node { node } } => vec![*node],
            EventKind::Maintenance { scope: MaintenanceScope::Region { region } } => self
                .nodes
                .values()
                .filter(|n| &n.region == region && n.state != NodeState::Removed)
                .map(|n| n.id)
                .collect(),
            EventKind::Spike { .. } => Vec::new(),
        }
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
    /// not held or targeted by another migration, its risk below `risk-clear` (or unknown),
    /// under no warning that slows leaders, and its region's risk below `risk-warn`, in a region where no other member of the group
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
                && !self.degraded.contains(&n.id)
                && !self.maintenance.contains(&n.id)
                && self.region_risks.get(&n.region).is_none_or(|r| *r < th.warn)
                && (!strict_regions || !taken_regions.contains(n.region.as_str()))
        });
        candidates
            .min_by(|a, b| {
                let risk = |id: NodeId| self.risks.get(&id).copied().unwrap_or(th.clear);
                // What a node reported free (a full node reports 0); its capacity while it has
                // reported no bytes at all.
                let free = |id: NodeId, cap: u64| {
                    let reported = self.node_stats.get(&id).filter(|s| s.used_bytes > 0 || s.available_bytes > 0);
                    reported.map_or(cap, |s| s.available_bytes)
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

/// Changes. Each change to a durable record returns the write that persists it.
impl ClusterState {
    /// Takes the next cluster-wide id (operators, groups, migrations, new shards).
    #[must_use = "the cluster record must be persisted"]
    pub(crate) fn alloc_id(&mut self) -> (u64, MetaWrite) {
        let id = self.cluster.next_id;
        self.cluster.next_id += 1;
        (id, meta::put(meta::cluster_key(), &self.cluster))
    }

    /// Pauses or resumes load-driven scheduling (see `policy::plan`).
    #[must_use = "the cluster record must be persisted"]
    pub(crate) fn set_scheduler_paused(&mut self, paused: bool) -> MetaWrite {
        self.cluster.scheduler_paused = paused;
        meta::put(meta::cluster_key(), &self.cluster)
    }

    /// The cluster record, to persist at bootstrap.
    pub(crate) fn cluster_record(&self) -> MetaWrite {
        meta::put(meta::cluster_key(), &self.cluster)
    }

    /// Stores a node's record.
    #[must_use = "the node record must be persisted"]
    pub(crate) fn put_node(&mut self, rec: NodeMeta) -> MetaWrite {
        let write = meta::put(meta::node_key(rec.id), &rec);
        self.nodes.insert(rec.id, rec);
        write
    }

    /// Records `node` as a member of `group` (or of none); `None` if the node is unknown.
    #[must_use = "the node record must be persisted"]
    pub(crate) fn assign_node(&mut self, node: NodeId, group: Option<GroupId>) -> Option<MetaWrite> {
        let rec = NodeMeta { group, ..self.nodes.get(&node)?.clone() };
        Some(self.put_node(rec))
    }

    /// Stores a group's record.
    #[must_use = "the group record must be persisted"]
    pub(crate) fn put_group(&mut self, rec: GroupMeta) -> MetaWrite {
        let write = meta::put(meta::group_key(rec.id), &rec);
        self.groups.insert(rec.id, rec);
        write
    }

    /// Places `shard` (known to the directory) as `placement`.
    #[must_use = "the shard record must be persisted"]
    pub(crate) fn place_shard(&mut self, shard: ShardId, placement: Placement) -> Option<MetaWrite> {
        let meta = self.directory.get(shard)?;
        let rec = ShardRecord { shard: meta.clone(), group: placement.group, split_at_ms: placement.split_at_ms };
        self.placement.insert(shard, placement);
        Some(meta::put(meta::shard_key(shard), &rec))
    }

    /// Forgets a shard the directory no longer holds (merged away): its placement and soft
    /// state.
    #[must_use = "the shard record must be deleted"]
    pub(crate) fn forget_shard(&mut self, shard: ShardId) -> MetaWrite {
        self.placement.remove(&shard);
        self.soft.remove(&shard);
        self.balance_moved_ms.remove(&shard);
        MetaWrite { key: meta::shard_key(shard), value: None }
    }

    /// Stores a new operator; its shards are busy until it finishes.
    #[must_use = "the operator record must be persisted"]
    pub(crate) fn start_operator(&mut self, op: Operator) -> MetaWrite {
        debug_assert!(!self.operators.contains_key(&op.id), "operator ids are never reused");
        let write = meta::put(meta::operator_key(op.id), &op);
        for shard in op.shards() {
            self.busy.insert(shard, op.id);
        }
        self.operators.insert(op.id, op);
        write
    }

    /// Moves operator `id` on against the directory: the poll, and the write when the
    /// operator changed. A finished operator frees its shards.
    pub(crate) fn poll_operator(&mut self, id: u64, now_ms: u64) -> Option<(Poll, Option<MetaWrite>)> {
        let op = self.operators.get_mut(&id)?;
        let poll = op.poll(&self.directory, now_ms, self.cfg.operator_step_timeout_ms);
        let write = poll.changed.then(|| meta::put(meta::operator_key(id), &*op));
        if op.status.is_finished() {
            self.busy.retain(|_, running| *running != id);
        }
        Some((poll, write))
    }

    /// Changes operator `id` with `change`; when it returns true the operator changed and
    /// its write is returned.
    #[must_use = "the operator record must be persisted"]
    pub(crate) fn update_operator(&mut self, id: u64, change: impl FnOnce(&mut Operator) -> bool) -> Option<MetaWrite> {
        let op = self.operators.get_mut(&id)?;
        change(op).then(|| meta::put(meta::operator_key(id), &*op))
    }

    /// Deletes a finished operator's record.
    #[must_use = "the operator record must be deleted"]
    pub(crate) fn remove_operator(&mut self, id: u64) -> MetaWrite {
        debug_assert!(self.operators.get(&id).is_none_or(|op| op.status.is_finished()));
        self.operators.remove(&id);
        MetaWrite { key: meta::operator_key(id), value: None }
    }

    /// Recomputes the busy shards from every unfinished operator (after a fail-over the meta
    /// shard may hold two for one shard, written by two managers in turn).
    pub(crate) fn rebuild_busy(&mut self) {
        self.busy.clear();
        for op in self.operators.values().filter(|op| !op.status.is_finished()) {
            for shard in op.shards() {
                self.busy.insert(shard, op.id);
            }
        }
    }

    /// Stores a migration's record.
    #[must_use = "the migration record must be persisted (or deliberately not, for soft fields)"]
    pub(crate) fn put_migration(&mut self, m: Migration) -> MetaWrite {
        let write = meta::put(meta::migration_key(m.id), &m);
        self.migrations.insert(m.id, m);
        write
    }

    /// Deletes a finished migration's record.
    #[must_use = "the migration record must be deleted"]
    pub(crate) fn remove_migration(&mut self, id: u64) -> MetaWrite {
        debug_assert!(self.migrations.get(&id).is_none_or(|m| !m.holds_node()));
        self.migrations.remove(&id);
        MetaWrite { key: meta::migration_key(id), value: None }
    }

    /// The directory, for reports and leader hints (soft: rebuilt from reports).
    pub(crate) fn directory_mut(&mut self) -> &mut Directory {
        &mut self.directory
    }

    /// A shard's soft state, created empty if it has none.
    pub(crate) fn soft_mut(&mut self, shard: ShardId) -> &mut ShardSoft {
        self.soft.entry(shard).or_default()
    }

    /// Drops a shard's soft state (its range changed: the old samples describe another).
    pub(crate) fn reset_soft(&mut self, shard: ShardId) {
        self.soft.remove(&shard);
    }

    /// Records a report of `shard`'s load score at `now_ms`, its range at epoch `version`,
    /// into its history (`crate::forecast`).
    pub(crate) fn record_load(&mut self, shard: ShardId, version: u64, now_ms: u64, score: f64) {
        let (interval, max_points) = (self.cfg.forecast_interval_ms, self.cfg.forecast_max_points);
        let series = self.series.entry(shard).or_default();
        if series.version == 0 {
            series.version = version;
        }
        if series.record(now_ms, score, interval, max_points) {
            let (steps, season) = self.cfg.forecast_steps();
            series.refit(season, steps);
            self.history_dirty.insert(shard);
        }
    }

    /// The meta-shard writes of at most `max` changed histories (the oldest-numbered shards
    /// first; the rest wait for the next round): a record per history, a delete for one gone.
    #[must_use = "the histories must be persisted"]
    pub(crate) fn history_writes(&mut self, max: usize) -> Vec<MetaWrite> {
        let ids: Vec<ShardId> = self.history_dirty.iter().copied().take(max).collect();
        ids.into_iter()
            .map(|id| {
                self.history_dirty.remove(&id);
                match self.series.get(&id) {
                    Some(s) => meta::put(meta::history_key(id), &s.to_record(id)),
                    None => MetaWrite { key: meta::history_key(id), value: None },
                }
            })
            .collect()
    }

    /// A split: `left` (now at epoch `version`) keeps `left_share` of the parent's history and
    /// the new `right` takes the rest, once per version whichever reports first (a right half
    /// reporting after its parent finds its part waiting in `split_rest`).
    pub(crate) fn split_history(&mut self, left: ShardId, right: Option<ShardId>, version: u64, left_share: f64) {
        debug_assert!((0.0..=1.0).contains(&left_share));
        let Some(parent) = self.series.get_mut(&left) else { return };
        self.history_dirty.insert(left);
        self.history_dirty.extend(right);
        if parent.version < version {
            let mut rest = parent.clone();
            rest.scale(1.0 - left_share);
            rest.version = version;
            parent.scale(left_share);
            parent.version = version;
            self.split_rest.insert(left, rest);
        }
        let Some(r) = right else { return };
        let rest = match self.split_rest.remove(&left) {
            Some(rest) if rest.version == version => rest,
            _ => parent.clone(),
        };
        self.series.entry(r).or_insert(rest);
    }

    /// The share of `shard`'s sampled recent requests that start before `key` (0.5 without
    /// samples): how a split at `key` divides its load.
    pub(crate) fn load_share_before(&self, shard: ShardId, key: &[u8]) -> f64 {
        let Some(soft) = self.soft(shard) else { return 0.5 };
        let (mut before, mut all) = (0usize, 0usize);
        for span in soft.samples.iter().flat_map(|(_, v)| v) {
            all += 1;
            before += usize::from(span.start.as_slice() < key);
        }
        if all == 0 {
            0.5
        } else {
            before as f64 / all as f64
        }
    }

    /// Notes that a balancing move of `shard`'s leadership started at `now_ms`.
    pub(crate) fn note_balance_move(&mut self, shard: ShardId, now_ms: u64) {
        self.balance_moved_ms.insert(shard, now_ms);
    }

    /// When `shard`'s leadership was last moved to balance load.
    pub(crate) fn balance_moved_ms(&self, shard: ShardId) -> Option<u64> {
        self.balance_moved_ms.get(&shard).copied()
    }

    /// A load as the forecasts track it ([`crate::ShardLoad::split_heat`]).
    pub(crate) fn heat(&self, load: &crate::load::ShardLoad) -> f64 {
        load.split_heat(self.cfg.load_split_qps, self.cfg.load_split_bytes_per_sec)
    }

    /// Drops the histories of shards the directory no longer holds and that reported nothing
    /// for two buckets (gone other than by a merge, which moves them; a split's parent waiting
    /// to report its narrower range keeps its own); a pass only when there are more histories
    /// than shards.
    pub(crate) fn prune_histories(&mut self, now_ms: u64) {
        if self.series.len() > self.directory.len() {
            let (directory, stale_ms) = (&self.directory, 2 * self.cfg.forecast_interval_ms);
            let dirty = &mut self.history_dirty;
            self.series.retain(|id, s| {
                let keep = directory.get(*id).is_some()
                    || s.open_bucket_ms().is_some_and(|t| now_ms.saturating_sub(t) < stale_ms);
                if !keep {
                    dirty.insert(*id);
                }
                keep
            });
        }
        // A right half that never reported (its parent split again, or merged away).
        let directory = &self.directory;
        self.split_rest.retain(|id, rest| directory.get(*id).is_some_and(|p| p.epoch.version <= rest.version));
    }

    /// Does `shard` have a load history?
    pub(crate) fn has_history(&self, shard: ShardId) -> bool {
        self.series.contains_key(&shard)
    }

    /// A merge: `target` takes `source`'s history on top of its own.
    pub(crate) fn merge_history(&mut self, target: ShardId, source: ShardId) {
        if let Some(src) = self.series.remove(&source) {
            self.series.entry(target).or_default().absorb(&src);
            self.history_dirty.extend([target, source]);
        }
    }

    /// A node's latest statistics, if it sent any.
    pub(crate) fn stats_of(&self, node: NodeId) -> Option<NodeStats> {
        self.node_stats.get(&node).copied()
    }

    /// A node's latest statistics (from its heartbeat).
    pub(crate) fn record_stats(&mut self, node: NodeId, stats: NodeStats) {
        self.node_stats.insert(node, stats);
    }

    /// Stores a known event's record.
    #[must_use = "the event record must be persisted"]
    pub(crate) fn put_event(&mut self, e: KnownEvent) -> MetaWrite {
        let write = meta::put(meta::event_key(e.id), &e);
        self.events.insert(e.id, e);
        write
    }

    /// Deletes a finished event's record.
    #[must_use = "the event record must be deleted"]
    pub(crate) fn remove_event(&mut self, id: u64) -> MetaWrite {
        self.events.remove(&id);
        MetaWrite { key: meta::event_key(id), value: None }
    }

    /// The nodes the events shape this round: in a preparing or open maintenance window
    /// (`maintenance`: they lead nothing), and whose being down is excused (`excused`: an open
    /// window or its grace).
    pub(crate) fn set_event_nodes(&mut self, maintenance: BTreeSet<NodeId>, excused: BTreeSet<NodeId>) {
        self.maintenance = maintenance;
        self.excused = excused;
    }

    /// The failure analysis's latest view.
    pub(crate) fn set_risks(&mut self, inputs: RiskInputs) {
        debug_assert!(inputs.nodes.values().chain(inputs.regions.values()).all(|r| (0.0..=1.0).contains(r)));
        self.risks = inputs.nodes;
        self.region_risks = inputs.regions;
        self.rtt_ms = inputs.rtt_ms;
        self.degraded = inputs.degraded;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_divides_the_history_by_its_share_whichever_half_reports_first() {
        let cluster = ClusterMeta { cluster_id: 1, replication_factor: 3, next_id: 10, scheduler_paused: false };
        let cfg = ManagerConfig { forecast_interval_ms: 1_000, ..ManagerConfig::default() };
        for right_first in [false, true] {
            let mut st = ClusterState::new(cfg.clone(), cluster.clone(), 0);
            for t in 0..5u64 {
                st.record_load(1, 1, t * 1_000, 100.0);
            }
            if right_first {
                // The right half displaces its parent first: it takes its share at once.
                st.split_history(1, Some(2), 2, 0.1);
            } else {
                // The parent reports its narrower range first; the right half comes later.
                st.split_history(1, None, 2, 0.1);
                st.split_history(1, Some(2), 2, 0.5);
            }
            let last = |id| st.series.get(&id).and_then(Series::current).expect("history");
            assert!((last(1) - 10.0).abs() < 1e-3, "left keeps 10%: {}", last(1));
            assert!((last(2) - 90.0).abs() < 1e-3, "right takes 90% (right first: {right_first}): {}", last(2));
            assert!(st.split_rest.is_empty());
        }
    }
}
