//! The shard manager's pure core: heartbeats, joins and the time in; meta-shard writes and
//! commands to shard leaders out (design.md §3, §4).
//!
//! The node server runs one [`Manager`] on the meta shard's leader. On becoming leader it
//! reads the meta shard ([`PersistedState`]) and builds a manager from it; it feeds it every
//! heartbeat and calls [`Manager::tick`] every scheduling interval; it writes the returned
//! [`Effects::writes`] to the meta shard in one batch and only then sends the
//! [`Effects::commands`] to the shards' leaders. If that write fails (the node lost the meta
//! leadership) it drops the manager: the next leader starts again from what was persisted.
//!
//! Invariants:
//! - An operator is persisted before its first command is sent; a shard has at most one
//!   running operator.
//! - The directory never goes back to an older epoch ([`Directory::update`]).
//! - Ids (shards, groups, operators) come from `ClusterMeta::next_id`, persisted in the same
//!   batch as the record that uses them, so no id is handed out twice across fail-overs.
//!
//! `Manager`: `bootstrap` / `recover(PersistedState)`, `join`, `heartbeat`, `set_risks(RiskInputs)`
//! (the failure model's risk per node and region, round trips, nodes under a disk warning),
//! `tick(now) -> Effects { writes, commands, finished, migrations }`, `record_verification`,
//! `submit` (manual operators), `events` (known events: maintenance windows, load spikes, their
//! `events` part), `forecast_report` (predicted load and advice, its `outlook` part),
//! `capacity_report` (projected bytes and load, nodes to add: its `capacity` part); node liveness (Suspect, Down), migrations, then group formation
//! (fill groups to the replication factor, one node per region, never with a held node or a
//! migration's target).

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::config::ManagerConfig;
use crate::directory::{Directory, Update};
use crate::error::{Error, Result};
use crate::load::ShardLoad;
use crate::meta::{self, MetaWrite, PersistedState};
use crate::model::Migration;
use crate::model::{
    ClusterMeta, Epoch, FailureRecord, GroupId, GroupMeta, NodeHeartbeat, NodeId, NodeMeta, NodeState, ShardId,
    ShardMeta, ShardSoft,
};
use crate::operator::{Operator, OperatorKind, Step, Verification};
use crate::policy::{self, Plan};
pub use crate::state::RiskInputs;
use crate::state::{ClusterState, Placement};

mod capacity;
mod events;
mod feedback;
pub(crate) mod migrate;
mod outlook;

/// Group failures kept per group.
const MAX_FAILURES_PER_GROUP: usize = 64;
/// Shard load histories persisted per round (`crate::forecast`): with the default 1-s rounds
/// and 10-minute buckets, 38,400 shards' buckets per bucket interval.
pub(crate) const MAX_HISTORY_WRITES_PER_ROUND: usize = 64;

/// A step for a shard's leader to carry out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Command {
    /// The operator it belongs to.
    pub operator: u64,
    /// The shard.
    pub shard: ShardId,
    /// The shard's epoch as the manager knows it.
    pub epoch: Epoch,
    /// The node to send it to (the shard's leader).
    pub leader: NodeId,
    /// What to do.
    pub step: Step,
}

/// What a [`Manager::tick`] asks the runtime to do, in this order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effects {
    /// Writes to the meta shard, as one batch.
    pub writes: Vec<MetaWrite>,
    /// Commands to send once the writes are durable.
    pub commands: Vec<Command>,
    /// Operators that finished this round (for the runtime's log).
    pub finished: Vec<Operator>,
    /// Migrations that started or changed stage this round (for the runtime's log).
    pub migrations: Vec<Migration>,
}

/// At most this many unlisted replicas in one [`HeartbeatAnswer`] (the rest come with later
/// heartbeats, once these are resolved).
pub const MAX_UNLISTED_PER_HEARTBEAT: usize = 16;

/// The manager's answer to a node's heartbeat: replicas the node must check with their peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeartbeatAnswer {
    /// Directory entries of shards the node holds a *stale* replica of (a newer configuration
    /// without it: it missed its removal, say while it was down). The node asks the newer
    /// configuration's members, who confirm, and then destroys the replica.
    pub stale: Vec<ShardMeta>,
    /// Shards the node holds a replica of that the directory does not list: merged away while
    /// the node was out of the group, or a split's new shard not reported yet. The node asks
    /// the members of the shard now holding the replica's start key, who confirm only a merge.
    pub unlisted: Vec<ShardId>,
}

/// Counts for metrics and `presage-ctl`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManagerStats {
    /// Known nodes (any state).
    pub nodes: usize,
    /// Nodes in state `Up`.
    pub nodes_up: usize,
    /// Replication groups.
    pub groups: usize,
    /// Shards in the directory.
    pub shards: usize,
    /// Operators running.
    pub running_operators: usize,
    /// Operators finished and still kept.
    pub finished_operators: usize,
    /// Load-driven scheduling is paused by an operator.
    #[serde(default)]
    pub scheduler_paused: bool,
}

/// A node as its last heartbeat described it, for `presage-ctl nodes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeStatus {
    /// The node.
    pub node: NodeId,
    /// Its data's bytes on disk, and the bytes still free there (its last report).
    pub used_bytes: u64,
    /// Free bytes.
    pub available_bytes: u64,
    /// Replicas it holds.
    pub replicas: u64,
    /// Replicas that lead.
    pub leaders: u64,
    /// Milliseconds since this manager last heard from it (`None`: not since it took over).
    pub last_heartbeat_ms_ago: Option<u64>,
}

/// Why a join was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The node id was removed from the cluster for good.
    #[error("node {0} was removed from the cluster; join with a new id")]
    Removed(NodeId),
    /// Node id 0 is reserved.
    #[error("node id 0 is reserved")]
    ZeroId,
}

/// The shard manager: the cluster state, plus what its runtime needs to drive operators and
/// persist records (module docs).
#[derive(Debug)]
pub struct Manager {
    /// What the policies read.
    pub(crate) st: ClusterState,
    last_heartbeat_ms: BTreeMap<NodeId, u64>,
    /// When each running operator's current step was last sent.
    last_sent_ms: HashMap<u64, u64>,
    /// Start times of balancing operators within the last minute.
    balance_starts_ms: VecDeque<u64>,
    /// Records to persist, in the order they were produced.
    pub(crate) pending: Vec<MetaWrite>,
    pub(crate) finished: Vec<Operator>,
    /// Migrations that started or changed stage since the last round.
    pub(crate) migration_events: Vec<Migration>,
    /// The last forecast report: when, for how many shards (`outlook`).
    report_cache: Option<(u64, usize, crate::forecast::ForecastReport)>,
    /// Every node's bytes and load per bucket, persisted (`capacity`).
    capacity: crate::capacity::CapacityHistory,
    /// The last capacity report and when it was made (`capacity`).
    capacity_cache: Option<(u64, crate::capacity::CapacityReport)>,
    /// Mitigations and their judgements, persisted (`feedback`).
    feedback: crate::feedback::Feedback,
}

impl Manager {
    /// The manager of a brand-new cluster whose first node is `first` (it becomes group 1,
    /// hosting the meta shard and shard 1); the initial records are in the first
    /// [`Manager::tick`]'s writes.
    pub fn bootstrap(cfg: ManagerConfig, cluster_id: u64, mut first: NodeMeta, now_ms: u64) -> Result<Self> {
        cfg.validate()?;
        let cluster =
            ClusterMeta { cluster_id, replication_factor: cfg.replication_factor, next_id: 2, scheduler_paused: false };
        let mut m = Manager::empty(cfg, cluster, now_ms);
        first.group = Some(1);
        first.state = NodeState::Up;
        let cluster = m.st.cluster_record();
        m.pending.push(cluster);
        let node = m.st.put_node(first.clone());
        m.pending.push(node);
        let group = m.st.put_group(GroupMeta { id: 1, nodes: vec![first.id], failures: Vec::new() });
        m.pending.push(group);
        Ok(m)
    }

    /// The manager over what a previous one persisted (after a fail-over). Fails if the
    /// cluster was never initialised.
    pub fn recover(cfg: ManagerConfig, mut state: PersistedState, now_ms: u64) -> Result<Self> {
        cfg.validate()?;
        let cluster = state.cluster.take().ok_or_else(|| Error::Corrupt {
            key: String::from_utf8_lossy(&meta::cluster_key()).into_owned(),
            reason: "the meta shard holds no cluster record".into(),
        })?;
        let history = std::mem::take(&mut state.capacity);
        let mitigations = std::mem::take(&mut state.mitigations);
        let max_mitigations = cfg.max_mitigations;
        let max_points = cfg.capacity_max_points;
        let mut m = Manager::over(ClusterState::recover(cfg, cluster, state, now_ms));
        let (capacity, dropped) = crate::capacity::CapacityHistory::recover(history, max_points);
        m.capacity = capacity;
        m.pending.extend(dropped.into_iter().map(|start| MetaWrite { key: meta::capacity_key(start), value: None }));
        let (feedback, dropped) = crate::feedback::Feedback::recover(mitigations, max_mitigations);
        m.feedback = feedback;
        m.pending.extend(dropped.into_iter().map(|id| MetaWrite { key: meta::mitigation_key(id), value: None }));
        Ok(m)
    }

    fn empty(cfg: ManagerConfig, cluster: ClusterMeta, now_ms: u64) -> Self {
        Manager::over(ClusterState::new(cfg, cluster, now_ms))
    }

    fn over(st: ClusterState) -> Self {
        Manager {
            st,
            last_heartbeat_ms: BTreeMap::new(),
            last_sent_ms: HashMap::new(),
            balance_starts_ms: VecDeque::new(),
            pending: Vec::new(),
            finished: Vec::new(),
            migration_events: Vec::new(),
            report_cache: None,
            capacity: crate::capacity::CapacityHistory::default(),
            capacity_cache: None,
            feedback: crate::feedback::Feedback::default(),
        }
    }

    /// The migration holding `node`, if any.
    pub fn migration_of(&self, node: NodeId) -> Option<&Migration> {
        self.st.migration_of(node)
    }

    /// The healthy node that would take `node`'s place in `group` (design.md §6): `Up`, in no
    /// group, not held or targeted by another migration, low risk, in a region the group lacks;
    /// ranked by risk, free capacity, load, then round trip.
    pub fn choose_target(&self, node: NodeId, group: GroupId) -> Option<NodeId> {
        self.st.choose_target(node, group)
    }

    /// The cluster record.
    pub fn cluster(&self) -> &ClusterMeta {
        self.st.cluster()
    }

    /// The directory.
    pub fn directory(&self) -> &Directory {
        self.st.directory()
    }

    /// Known nodes.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeMeta> + '_ {
        self.st.nodes()
    }

    /// Replication groups.
    pub fn groups(&self) -> impl Iterator<Item = &GroupMeta> + '_ {
        self.st.groups()
    }

    /// Operators, running and finished, by id.
    pub fn operators(&self) -> impl Iterator<Item = &Operator> + '_ {
        self.st.operators()
    }

    /// The gradual shifts of risky leaderships, running and recently finished, with their
    /// weights (`crate::shift`).
    pub fn shifts(&self) -> Vec<crate::shift::Shift> {
        self.st.shifts().cloned().collect()
    }

    /// How much of its replicas' share of replica reads each node should get now, 0 to 1,
    /// for the nodes below 1 (clients weigh their choice of replica by it): 0 for a node
    /// not up or at `risk-warn`, `1 - w` for a node whose leaderships a shift is moving off at
    /// weight `w`, so that reads leave it as gradually as its leaderships do.
    pub fn read_weights(&self, now_ms: u64) -> Vec<(NodeId, f64)> {
        let cfg = self.st.cfg();
        let shifted: HashMap<NodeId, f64> = self
            .st
            .shifts()
            .filter(|s| s.finished_ms.is_none())
            .map(|s| (s.node, s.weight_at(now_ms, cfg.shift_period_ms)))
            .collect();
        self.st
            .nodes()
            .filter_map(|n| {
                let at_risk = cfg.proactive_migration && self.st.risk(n.id).is_some_and(|r| r >= cfg.risk_warn);
                let weight = if n.state != NodeState::Up || at_risk {
                    0.0
                } else {
                    1.0 - shifted.get(&n.id).copied().unwrap_or(0.0)
                };
                (weight < 1.0).then_some((n.id, weight.clamp(0.0, 1.0)))
            })
            .collect()
    }

    /// Every shard's risk from its replicas' nodes and its own p99 and errors
    /// (`crate::range_risk`).
    pub fn range_risks(&self) -> HashMap<ShardId, crate::range_risk::RangeRisk> {
        self.st.range_risks()
    }

    /// A shard's soft state (load, size, timers), if it reported.
    pub fn shard_soft(&self, id: ShardId) -> Option<&ShardSoft> {
        self.st.soft(id)
    }

    /// Every node's last reported statistics and how long ago it was heard from.
    pub fn node_status(&self, now_ms: u64) -> Vec<NodeStatus> {
        self.st
            .nodes()
            .map(|n| {
                let stats = self.st.stats_of(n.id).unwrap_or_default();
                NodeStatus {
                    node: n.id,
                    used_bytes: stats.used_bytes,
                    available_bytes: stats.available_bytes,
                    replicas: stats.replicas,
                    leaders: stats.leaders,
                    last_heartbeat_ms_ago: self.last_heartbeat_ms.get(&n.id).map(|t| now_ms.saturating_sub(*t)),
                }
            })
            .collect()
    }

    /// Counts.
    pub fn stats(&self) -> ManagerStats {
        let running = self.st.operators().filter(|op| !op.status.is_finished()).count();
        ManagerStats {
            nodes: self.st.nodes().count(),
            nodes_up: self.st.nodes().filter(|n| n.state == NodeState::Up).count(),
            groups: self.st.groups().count(),
            shards: self.st.directory().len(),
            running_operators: running,
            finished_operators: self.st.operators().count() - running,
            scheduler_paused: self.st.cluster().scheduler_paused,
        }
    }

    pub(crate) fn alloc_id(&mut self) -> u64 {
        let (id, write) = self.st.alloc_id();
        self.pending.push(write);
        id
    }

    /// Feeds the failure analysis's latest view ([`RiskInputs`]). It drives proactive
    /// migration and leader shedding at the next [`Manager::tick`].
    pub fn set_risks(&mut self, inputs: RiskInputs) {
        self.st.set_risks(inputs);
    }

    /// Notes the outcome of a [`Step::VerifyReplica`] the runtime sent for `operator`
    /// (persisted with the operator; the next round moves it on or rolls it back).
    pub fn record_verification(&mut self, operator: u64, v: Verification) {
        let Some(op) = self.st.operator(operator) else { return };
        let (shard, node, ok) = (op.shard, v.node, v.matches());
        // A copy counts once: the operator made it (it added the learner) and this is its
        // first matching verification.
        let copied = op.steps.contains(&Step::AddLearner { node })
            && !op.verifications.iter().any(|x| x.node == node && x.matches());
        let Some(write) = self.st.update_operator(operator, |op| op.record_verification(v)) else { return };
        self.pending.push(write);
        if ok && copied {
            self.pending.extend(migrate::note_copy_verified(&mut self.st, shard, node));
        }
    }

    /// Notes a leader hint for `shard` (a node answered a step with `NotLeader`): commands
    /// go there until the next report.
    pub fn note_leader(&mut self, shard: ShardId, leader: NodeId) {
        self.st.directory_mut().set_leader(shard, Some(leader));
    }

    /// Takes the records to persist now (a join must be durable before it is answered).
    pub fn take_writes(&mut self) -> Vec<MetaWrite> {
        std::mem::take(&mut self.pending)
    }

    /// Registers a node (or updates the addresses of a known one); it joins a group at a
    /// later tick.
    pub fn join(&mut self, node: NodeMeta, now_ms: u64) -> std::result::Result<(), JoinError> {
        if node.id == 0 {
            return Err(JoinError::ZeroId);
        }
        let rec = match self.st.node(node.id) {
            Some(cur) if cur.state == NodeState::Removed => return Err(JoinError::Removed(node.id)),
            Some(cur) => NodeMeta { state: cur.state, group: cur.group, ..node },
            None => NodeMeta { state: NodeState::Up, group: None, ..node },
        };
        let id = rec.id;
        if self.st.node(id) != Some(&rec) {
            let write = self.st.put_node(rec);
            self.pending.push(write);
        }
        self.last_heartbeat_ms.insert(id, now_ms);
        Ok(())
    }

    /// Sets a node's state by hand (`presage-ctl node drain`, `remove`).
    pub fn set_node_state(&mut self, node: NodeId, state: NodeState) -> bool {
        let Some(n) = self.st.node(node) else { return false };
        if n.state != state {
            let write = self.st.put_node(NodeMeta { state, ..n.clone() });
            self.pending.push(write);
        }
        true
    }

    /// Takes in a node's heartbeat; returns what the node must check about its replicas
    /// ([`HeartbeatAnswer`]). `None` if the node never joined (it must join first).
    pub fn heartbeat(&mut self, hb: NodeHeartbeat, now_ms: u64) -> Option<HeartbeatAnswer> {
        let node = self.st.node(hb.node)?;
        if matches!(node.state, NodeState::Suspect | NodeState::Down) {
            self.set_node_state(hb.node, NodeState::Up);
        }
        self.last_heartbeat_ms.insert(hb.node, now_ms);
        self.st.record_stats(hb.node, hb.stats);
        // A report counts only from the shard's leader speaking for itself: a voter of the
        // shard it describes, naming itself as the leader (a buggy or stale node cannot
        // make the directory forget real replicas). Older epochs are ignored by the
        // directory.
        let sender = hb.node;
        let own = |r: &crate::model::ShardReport| {
            r.shard.leader == Some(sender)
                && r.shard.replicas.iter().any(|x| x.node == sender && x.role == crate::model::Role::Voter)
        };
        for report in hb.shards.into_iter().filter(own) {
            self.shard_report(report, now_ms);
        }
        // Reads it served as a follower count towards the shard's load with its leader's next
        // report (its latest report per follower). Only from a replica of the shard that does
        // not lead it; at most one entry per replica it holds.
        for (id, load) in hb.replica_loads.into_iter().take(hb.replicas.len()) {
            let member =
                self.st.directory().get(id).is_some_and(|s| s.replica(sender).is_some() && s.leader != Some(sender));
            if member {
                self.st.soft_mut(id).replica_load.insert(sender, (now_ms, load));
            }
        }
        let directory = self.st.directory();
        let stale = hb
            .replicas
            .iter()
            .filter_map(|(id, epoch)| {
                directory.get(*id).filter(|s| s.replica(hb.node).is_none() && s.epoch.conf_ver > epoch.conf_ver)
            })
            .cloned()
            .collect();
        let mut unlisted: Vec<ShardId> =
            hb.replicas.iter().map(|(id, _)| *id).filter(|id| directory.get(*id).is_none()).collect();
        // In turns, so that replicas that stay unlisted (a split's shard not reported yet, one
        // its node keeps for a merge) do not hide the others.
        if unlisted.len() > MAX_UNLISTED_PER_HEARTBEAT {
            let turn = (now_ms / self.st.cfg().heartbeat_interval_ms.max(1)) as usize;
            let len = unlisted.len();
            unlisted.rotate_left(turn.wrapping_mul(MAX_UNLISTED_PER_HEARTBEAT) % len);
            unlisted.truncate(MAX_UNLISTED_PER_HEARTBEAT);
        }
        Some(HeartbeatAnswer { stale, unlisted })
    }

    fn shard_report(&mut self, report: crate::model::ShardReport, now_ms: u64) {
        let shard = report.shard;
        let old = self.st.directory().get(shard.id).cloned();
        // Other shards this report may replace: a merge's source, or a split's parent that
        // has not reported its narrower range yet.
        let prior: Vec<ShardMeta> =
            self.st.directory().overlapping(&shard).filter(|p| p.id != shard.id).cloned().collect();
        let update = self.st.directory_mut().update(shard.clone());
        let removed = match &update {
            Update::Stale => return,
            Update::Same => Vec::new(),
            Update::Inserted { removed } | Update::Newer { removed } => removed.clone(),
        };
        // How a split divides the parent's load, from its samples (read before the parent's
        // soft state goes): the left part's share of the requests.
        let share = |st: &ClusterState, parent: ShardId, key: &[u8]| st.load_share_before(parent, key);
        if update != Update::Same {
            let inherited = removed.iter().find_map(|id| self.st.group_of(*id));
            // Shares of the splits seen, before `forget_shard` drops the parents' samples.
            let shares: Vec<(ShardId, f64)> = prior
                .iter()
                .filter(|p| removed.contains(&p.id) && !covers(&shard, p))
                .map(|p| (p.id, share(&self.st, p.id, &shard.start)))
                .collect();
            let own_share = shard.end.as_deref().map_or(0.5, |end| {
                // The shard reports a narrower range: a split at its new end.
                share(&self.st, shard.id, end)
            });
            for id in &removed {
                let write = self.st.forget_shard(*id);
                self.pending.push(write);
            }
            let split = match &old {
                None => shard.epoch.version > 1,
                Some(o) => shard.epoch.version > o.epoch.version && narrower(&shard, o),
            };
            // The load history follows the keys: a merge adds the source's, a split divides
            // the parent's by the load sampled on either side of the key.
            for p in prior.iter().filter(|p| removed.contains(&p.id)) {
                if covers(&shard, p) {
                    self.st.merge_history(shard.id, p.id);
                } else {
                    let left_share = shares.iter().find(|(id, _)| *id == p.id).map_or(0.5, |(_, s)| *s);
                    self.st.split_history(p.id, Some(shard.id), shard.epoch.version, left_share);
                }
            }
            if old.as_ref().is_some_and(|o| narrower(&shard, o)) {
                self.st.split_history(shard.id, None, shard.epoch.version, own_share);
            } else if old.is_none() && split && prior.is_empty() && !self.st.has_history(shard.id) {
                // A new right half whose parent reported its narrower range first: the parent
                // is its left neighbour at the same version. (A parent reporting after its
                // right half has a history already, taken when the right half displaced it.)
                let parent = self
                    .st
                    .directory()
                    .left_neighbour(&shard)
                    .filter(|p| p.epoch.version == shard.epoch.version)
                    .map(|p| p.id);
                if let Some(parent) = parent {
                    // The parent's history was divided when it reported (its samples are gone).
                    self.st.split_history(parent, Some(shard.id), shard.epoch.version, 0.5);
                }
            }
            let mut placement = self.st.placement(shard.id).unwrap_or_else(|| {
                let group = inherited.or_else(|| self.group_for(&shard)).unwrap_or(1);
                Placement { group, split_at_ms: None }
            });
            if split {
                placement.split_at_ms = Some(now_ms);
            }
            // The directory holds the shard now (inserted or newer): the write is there.
            self.pending.extend(self.st.place_shard(shard.id, placement));
            if old.is_some_and(|o| o.epoch.version != shard.epoch.version) {
                // A new range: the old samples and timers describe another key range.
                self.st.reset_soft(shard.id);
            }
        }
        let cfg = self.st.cfg().clone();
        let soft = self.st.soft_mut(shard.id);
        let mut report_load = report.load;
        // Followers' reports from the last two heartbeat intervals (older ones: the follower
        // went quiet, or the leader did not report for a while).
        let fresh_ms = 2 * cfg.heartbeat_interval_ms;
        for (at_ms, load) in std::mem::take(&mut soft.replica_load).into_values() {
            if now_ms.saturating_sub(at_ms) <= fresh_ms {
                report_load.absorb(&load, cfg.max_samples_per_report);
            }
        }
        soft.load = ShardLoad::from_report(&report_load);
        soft.size_bytes = report.size_bytes;
        soft.keys = report.keys;
        soft.reported_at_ms = Some(now_ms);
        let load = soft.load;
        if !report_load.samples.is_empty() {
            soft.samples.push_back((now_ms, report_load.samples));
        }
        while soft.samples.front().is_some_and(|(t, _)| now_ms.saturating_sub(*t) > cfg.load_split_window_ms) {
            soft.samples.pop_front();
        }
        let hot = soft.load.qps() >= cfg.load_split_qps || soft.load.bytes_per_sec() >= cfg.load_split_bytes_per_sec;
        soft.hot_since_ms = if hot { Some(soft.hot_since_ms.unwrap_or(now_ms)) } else { None };
        let cold = soft.size_bytes < cfg.merge_max_size_bytes
            && soft.keys < cfg.merge_max_keys
            && soft.load.qps() < cfg.load_split_qps / 2.0
            && soft.load.bytes_per_sec() < cfg.load_split_bytes_per_sec / 2.0;
        soft.cold_since_ms = if cold { Some(soft.cold_since_ms.unwrap_or(now_ms)) } else { None };
        let heat = self.st.heat(&load);
        self.st.record_load(shard.id, shard.epoch.version, now_ms, heat);
    }

    /// The group holding all of `shard`'s voters, else the one holding most of them.
    fn group_for(&self, shard: &ShardMeta) -> Option<GroupId> {
        let voters = shard.voters();
        self.st
            .groups()
            .max_by_key(|g| (voters.iter().filter(|v| g.nodes.contains(v)).count(), std::cmp::Reverse(g.id)))
            .map(|g| g.id)
    }

    /// One scheduling round at `now_ms`: node liveness, group membership, operator
    /// progress, and new operators from the policies.
    pub fn tick(&mut self, now_ms: u64) -> Effects {
        // Events first: a node down in a maintenance window is not marked failed below.
        let events = events::update(&mut self.st, now_ms);
        self.absorb(events);
        self.update_node_states(now_ms);
        let migrations = migrate::update(&mut self.st, now_ms);
        self.absorb(migrations);
        self.update_groups();
        // Demotions' eagerness per cause, once a round.
        let demotion = crate::feedback::MitigationKind::Demotion;
        let eager: [(&str, f64); 3] =
            ["nodes", "latency", "errors"].map(|c| (c, self.feedback.eagerness(demotion, c, now_ms)));
        let by_cause = |cause: &str| eager.iter().find(|(c, _)| *c == cause).map_or(1.0, |(_, e)| *e);
        let shifts = self.st.update_shifts(now_ms, policy::may_lead, by_cause);
        self.note_round(shifts, now_ms);
        self.feedback_round(now_ms);
        self.st.prune_histories(now_ms);
        let histories = self.st.history_writes(MAX_HISTORY_WRITES_PER_ROUND);
        self.pending.extend(histories);
        self.observe_capacity(now_ms);
        let mut commands = Vec::new();
        self.poll_operators(now_ms, &mut commands);
        self.prune_finished();
        self.balance_starts_ms.retain(|t| now_ms.saturating_sub(*t) < 60_000);
        let plans = policy::plan(&self.st, now_ms);
        let mut running = self.st.operators().filter(|op| !op.status.is_finished()).count();
        for plan in plans {
            if running >= self.st.cfg().max_running_operators {
                break;
            }
            if plan.counts_as_balance {
                if self.balance_starts_ms.len() >= self.st.cfg().max_balance_moves_per_minute {
                    continue;
                }
                self.balance_starts_ms.push_back(now_ms);
            }
            if self.start(plan, now_ms, &mut commands).is_some() {
                running += 1;
            }
        }
        Effects {
            writes: std::mem::take(&mut self.pending),
            commands,
            finished: std::mem::take(&mut self.finished),
            migrations: std::mem::take(&mut self.migration_events),
        }
    }

    /// Starts `plan`; returns the new operator's id (`None`: the shard is busy, or the plan
    /// only re-placed it).
    fn start(&mut self, plan: Plan, now_ms: u64, commands: &mut Vec<Command>) -> Option<u64> {
        if self.st.is_busy(plan.shard) {
            return None;
        }
        if let Some(group) = plan.new_group {
            self.replace_shard(plan.shard, group);
            if plan.steps.is_empty() {
                return None; // only re-placed: the repair policy moves the replicas
            }
        }
        let id = self.alloc_id();
        let steps = plan
            .steps
            .into_iter()
            .map(|s| match s {
                Step::Split { key, epoch, .. } => Step::Split { key, epoch, new_shard: self.alloc_id() },
                other => other,
            })
            .collect();
        if plan.kind == OperatorKind::BalanceLeader {
            self.st.note_balance_move(plan.shard, now_ms);
        }
        if let OperatorKind::DemoteLeader { from } = plan.kind {
            self.st.note_demotion(from, plan.shard, now_ms);
        }
        self.note_plan(&plan.kind, plan.shard, now_ms);
        let op = Operator::new(id, plan.shard, plan.kind, steps, plan.rollback, now_ms);
        let write = self.st.start_operator(op);
        self.pending.push(write);
        self.poll_one(id, now_ms, commands);
        Some(id)
    }

    fn poll_operators(&mut self, now_ms: u64, commands: &mut Vec<Command>) {
        // Every unfinished operator, not just the one `busy` names per shard: after a
        // fail-over the meta shard may hold two for one shard (written by two managers in
        // turn); each must still finish.
        let running: Vec<u64> = self.st.operators().filter(|op| !op.status.is_finished()).map(|op| op.id).collect();
        for id in running {
            self.poll_one(id, now_ms, commands);
        }
        self.st.rebuild_busy();
    }

    fn poll_one(&mut self, id: u64, now_ms: u64, commands: &mut Vec<Command>) {
        let Some(before) = self.st.operator(id).map(|op| op.next_step) else { return };
        let Some((poll, write)) = self.st.poll_operator(id, now_ms) else { return };
        self.pending.extend(write);
        let Some(op) = self.st.operator(id) else { return };
        if op.status.is_finished() {
            self.finished.push(op.clone());
            self.last_sent_ms.remove(&id);
            return;
        }
        let Some(step) = poll.action else { return };
        let fresh_step = op.next_step != before || poll.changed;
        let retry_ms = self.st.cfg().operator_retry_ms;
        let due = self.last_sent_ms.get(&id).is_none_or(|t| now_ms.saturating_sub(*t) >= retry_ms);
        let Some(shard) = self.st.directory().get(op.shard) else { return };
        let Some(leader) = shard.leader else { return };
        if fresh_step || due {
            self.last_sent_ms.insert(id, now_ms);
            commands.push(Command { operator: id, shard: op.shard, epoch: shard.epoch, leader, step });
        }
    }

    fn prune_finished(&mut self) {
        let finished: Vec<u64> = self.st.operators().filter(|op| op.status.is_finished()).map(|op| op.id).collect();
        let excess = finished.len().saturating_sub(self.st.cfg().max_finished_operators);
        for id in finished.into_iter().take(excess) {
            let write = self.st.remove_operator(id);
            self.pending.push(write);
        }
    }

    fn update_node_states(&mut self, now_ms: u64) {
        let live: Vec<(NodeId, NodeState)> = self
            .st
            .nodes()
            .filter(|n| matches!(n.state, NodeState::Up | NodeState::Suspect))
            .map(|n| (n.id, n.state))
            .collect();
        for (id, state) in live {
            let heard = self.last_heartbeat_ms.get(&id).copied().unwrap_or(self.st.started_ms());
            let silent = now_ms.saturating_sub(heard);
            let next = if silent > self.st.cfg().node_down_after_ms {
                NodeState::Down
            } else if silent > self.st.cfg().node_suspect_after_ms {
                NodeState::Suspect
            } else {
                NodeState::Up
            };
            if next != state {
                self.set_node_state(id, next);
                if next == NodeState::Down && !self.st.down_excused(id) {
                    self.record_failure(id, now_ms, format!("no heartbeat for {silent} ms"));
                }
            }
        }
    }

    fn record_failure(&mut self, node: NodeId, at_ms: u64, reason: String) {
        let Some(g) = self.st.node(node).and_then(|n| n.group) else { return };
        let Some(mut group) = self.st.group(g).cloned() else { return };
        group.failures.push(FailureRecord { node, at_ms, reason });
        if group.failures.len() > MAX_FAILURES_PER_GROUP {
            group.failures.remove(0);
        }
        let write = self.st.put_group(group);
        self.pending.push(write);
    }

    /// Fills groups short of `replication_factor` members and forms new groups from
    /// ungrouped `Up` nodes, one node per region (fewer distinct regions only when the
    /// whole cluster has fewer than `replication_factor`).
    fn update_groups(&mut self) {
        let rf = self.st.cluster().replication_factor;
        let regions_total = {
            let mut r: Vec<&str> =
                self.st.nodes().filter(|n| n.state != NodeState::Removed).map(|n| n.region.as_str()).collect();
            r.sort_unstable();
            r.dedup();
            r.len()
        };
        let short: Vec<GroupId> = self.st.groups().filter(|g| g.nodes.len() < rf).map(|g| g.id).collect();
        for gid in short {
            loop {
                let members = self.st.group(gid).map(|g| g.nodes.clone()).unwrap_or_default();
                if members.len() >= rf {
                    break;
                }
                let Some(node) = self.pick_ungrouped(&members, regions_total, rf) else { break };
                self.add_to_group(gid, node);
            }
        }
        while let Some(first) = self.pick_ungrouped(&[], regions_total, rf) {
            let mut members = vec![first];
            while members.len() < rf {
                match self.pick_ungrouped(&members, regions_total, rf) {
                    Some(n) => members.push(n),
                    None => break,
                }
            }
            if members.len() < rf {
                break; // wait for more nodes
            }
            let gid = self.alloc_id();
            let write = self.st.put_group(GroupMeta { id: gid, nodes: members.clone(), failures: Vec::new() });
            self.pending.push(write);
            for n in members {
                self.pending.extend(self.st.assign_node(n, Some(gid)));
            }
        }
    }

    /// The lowest-id ungrouped `Up` node that may join a group of `members`: preferably in
    /// a region none of them is in.
    fn pick_ungrouped(&self, members: &[NodeId], regions_total: usize, rf: usize) -> Option<NodeId> {
        let regions: Vec<&str> = members.iter().filter_map(|m| self.st.node(*m)).map(|n| n.region.as_str()).collect();
        let free = self.st.nodes().filter(|n| {
            n.group.is_none()
                && n.state == NodeState::Up
                && !members.contains(&n.id)
                && !self.st.is_held(n.id)
                && !self.st.is_migration_target(n.id)
        });
        let mut fallback = None;
        for n in free {
            if !regions.contains(&n.region.as_str()) {
                return Some(n.id);
            }
            if fallback.is_none() && regions_total < rf {
                fallback = Some(n.id);
            }
        }
        fallback
    }

    fn add_to_group(&mut self, gid: GroupId, node: NodeId) {
        let Some(mut g) = self.st.group(gid).cloned() else { return };
        g.nodes.push(node);
        let write = self.st.put_group(g);
        self.pending.push(write);
        self.pending.extend(self.st.assign_node(node, Some(gid)));
    }

    /// Takes a migration step's changes into this round's effects.
    pub(crate) fn absorb(&mut self, changes: migrate::Changes) {
        self.pending.extend(changes.writes);
        self.migration_events.extend(changes.events);
    }

    /// Places `shard` in `group` (persisted); the repair policy then moves its replicas.
    pub(crate) fn replace_shard(&mut self, shard: ShardId, group: GroupId) {
        if let Some(p) = self.st.placement(shard) {
            self.pending.extend(self.st.place_shard(shard, Placement { group, ..p }));
        }
    }

    /// Submits an operator by hand (`presage-ctl`): refused while the shard has one running.
    pub fn submit(&mut self, shard: ShardId, steps: Vec<Step>, rollback: Vec<Step>, now_ms: u64) -> Option<u64> {
        if steps.is_empty() || self.st.is_busy(shard) || self.st.directory().get(shard).is_none() {
            return None;
        }
        let plan =
            Plan { shard, kind: OperatorKind::Manual, steps, rollback, counts_as_balance: false, new_group: None };
        // Its first command is sent by the next tick, after the operator is persisted.
        let id = self.start(plan, now_ms, &mut Vec::new())?;
        self.last_sent_ms.remove(&id);
        Some(id)
    }
}

/// Does `outer` hold every key of `inner`?
fn covers(outer: &ShardMeta, inner: &ShardMeta) -> bool {
    let end_ok = match (&outer.end, &inner.end) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(o), Some(i)) => i <= o,
    };
    outer.start <= inner.start && end_ok
}

/// True when `new` covers less than `old` (a split, rather than a merge).
fn narrower(new: &ShardMeta, old: &ShardMeta) -> bool {
    match (&new.end, &old.end) {
        (Some(n), Some(o)) => n < o,
        (Some(_), None) => true,
        (None, _) => new.start > old.start,
    }
}
