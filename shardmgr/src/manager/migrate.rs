//! Proactive migration (design.md §6): moving a node's replicas off it before it fails.
//!
//! A [`Migration`] is one node's evacuation, recorded in the meta shard and driven by the
//! failure model's risk for that node, with two thresholds and hysteresis so that a brief
//! spike never causes churn (`[shard-manager]` `risk-warn`, `risk-act`, `risk-clear`,
//! `migration-clear-after-ms`):
//!
//! 1. **Preparing** (risk >= warn): the node's leaderships move to its group's other voters a
//!    few per round (`migration-leader-moves-per-round`); a healthy target node is chosen
//!    ([`Manager::choose_target`]) and learner copies of the group's shards are filled on it,
//!    hottest first, and verified (range checksum at one log index), at most
//!    `max-copies-per-node` at once. The copies are the replication layer's snapshots
//!    (zstd-compressed, crc32-checked chunks under the node's snapshot bandwidth budget) and
//!    then the Raft log tail, which keeps them current. Learners do not vote.
//! 2. **Cutting over** (risk >= act; or a sustained warning: an early warning that slows the
//!    node's leaders (its disk or links) held without a break for `migration-act-after-ms`,
//!    since a node that leads nothing shows the model fewer signals, and its risk can fall
//!    back while its disk keeps failing (the timer runs from the first round that sees the
//!    warning with the migration started, so a warning alone, below warn, evacuates nothing);
//!    or, while this node is itself at risk, another voter of its group is being evacuated
//!    too (for its risk, or down): the group is one failure from losing its quorum, and until
//!    a healthy copy votes every commit waits for an ailing member; or the node is already
//!    down: reactive repair; a risk that cleared for the clear delay stands down first): the
//!    target replaces the node in its replication group; the repair policy then swaps each
//!    shard's copy in and the node's replica out in one joint-consensus change, after
//!    verifying the copy again, and removes the old replica. A failed verification or a
//!    timeout rolls a shard back (the original replica keeps serving) and repair tries again.
//! 3. **Evacuated**: no replica is left on the node; it is held out of groups and leaderships
//!    until its risk has stayed below `clear`, with no such warning, for the clear delay (then
//!    **Released**: a spare again). A manual evacuation is never released automatically.
//! 4. **Stood down** (while preparing, risk below clear and no such warning for the clear
//!    delay): the prepared learners are no longer anyone's target, so repair removes them;
//!    voters never moved.
//!
//! Every step is an operator (idempotent, judged from reported state, resumable after a
//! manager fail-over); the migration record itself changes only on stage transitions.
//!
//! The steps here are functions of the cluster state (and the time): each changes the
//! [`ClusterState`] and returns what it changed ([`Changes`]: the records to persist, the
//! migrations to report); the manager puts them in its round's effects.

use super::Manager;
use crate::meta::MetaWrite;
use crate::model::{GroupId, Migration, MigrationCause, MigrationStage, MigrationView, NodeId, NodeState, ShardId};
use crate::operator::{OperatorKind, Step};
use crate::state::ClusterState;

/// What a migration step changed.
#[derive(Debug, Default)]
#[must_use = "the writes must be persisted"]
pub(crate) struct Changes {
    /// Records to persist, in order.
    pub(crate) writes: Vec<MetaWrite>,
    /// Migrations that started or changed stage (for the runtime's log).
    pub(crate) events: Vec<Migration>,
}

/// Starts, advances and finishes migrations (module docs); called every round before group
/// formation and the policies.
pub(crate) fn update(st: &mut ClusterState, now_ms: u64) -> Changes {
    let mut out = Changes::default();
    let th = st.cfg().thresholds();
    // New migrations: grouped nodes that went down, or (when proactive) whose risk reached
    // `warn`.
    let proactive = st.cfg().proactive_migration;
    // Less eager after evacuations that did not help (`crate::feedback`): up to `act`.
    let warn = (th.warn / st.eagerness().evacuation).min(th.act);
    let starts: Vec<(NodeId, GroupId, MigrationCause)> = st
        .nodes()
        .filter(|n| !st.is_held(n.id))
        .filter_map(|n| {
            let group = n.group?;
            let risk = st.risk(n.id);
            match n.state {
                // Down in a maintenance window (or its grace after): planned, not a failure.
                NodeState::Down if !st.down_excused(n.id) => Some((n.id, group, MigrationCause::Failed)),
                NodeState::Up | NodeState::Suspect if proactive && risk.is_some_and(|r| r >= warn) => {
                    Some((n.id, group, MigrationCause::Risk))
                }
                _ => None,
            }
        })
        .collect();
    for (node, group, cause) in starts {
        let stage = if cause == MigrationCause::Risk { MigrationStage::Preparing } else { MigrationStage::CuttingOver };
        let (_, started) = start(st, node, group, cause, stage, now_ms);
        out.absorb(started);
    }
    let active: Vec<u64> = st.migrations().filter(|m| m.holds_node()).map(|m| m.id).collect();
    for id in active {
        advance(st, id, now_ms, &mut out);
    }
    prune_finished(st, &mut out);
    out
}

impl Changes {
    fn absorb(&mut self, other: Changes) {
        self.writes.extend(other.writes);
        self.events.extend(other.events);
    }
}

/// Records a new migration of `node` (the caller checked it is not held); returns its id.
pub(crate) fn start(
    st: &mut ClusterState,
    node: NodeId,
    group: GroupId,
    cause: MigrationCause,
    stage: MigrationStage,
    now_ms: u64,
) -> (u64, Changes) {
    debug_assert!(!st.is_held(node), "node {node} is already held by a migration");
    let mut out = Changes::default();
    let (id, write) = st.alloc_id();
    out.writes.push(write);
    let risk = st.risk(node);
    let mut m = Migration {
        id,
        node,
        group,
        target: None,
        cause,
        stage,
        risk_at_start: risk,
        started_ms: now_ms,
        stage_since_ms: now_ms,
        below_clear_since_ms: None,
        degraded_since_ms: None,
        finished_ms: None,
        bytes_copied: 0,
        shards_copied: 0,
        note: String::new(),
    };
    m.target = st.choose_target(node, group);
    out.events.push(m.clone());
    out.writes.push(st.put_migration(m));
    (id, out)
}

/// Moves migration `id` on (module docs) into `out`.
fn advance(st: &mut ClusterState, id: u64, now_ms: u64, out: &mut Changes) {
    let th = st.cfg().thresholds();
    let Some(m) = st.migration(id).cloned() else { return };
    let mut next = m.clone();
    let state = st.node(m.node).map(|n| n.state);
    let down = matches!(state, Some(NodeState::Down | NodeState::Removed) | None);
    let risk = st.risk(m.node);
    // The stand-down / release timer: risk below clear, continuously, and no warning that
    // slows the node's leaders (its disk or links). An unknown risk (no model) counts as
    // clear only for a node that failed and came back: a warning needs a known risk to end.
    let warned = st.degraded().contains(&m.node);
    let clear = !warned
        && match risk {
            Some(r) => r < th.clear,
            None => m.cause == MigrationCause::Failed && state == Some(NodeState::Up),
        };
    next.below_clear_since_ms = (clear && !down).then(|| m.below_clear_since_ms.unwrap_or(now_ms));
    next.degraded_since_ms = (warned && !down).then(|| m.degraded_since_ms.unwrap_or(now_ms));
    let act_after_ms = st.cfg().migration_act_after_ms;
    // Only while this node is itself at risk (warned, or at warn), and never against its own
    // stand-down (`cleared` comes first below).
    let at_risk_itself = !clear && (warned || risk.is_some_and(|r| r >= th.warn));
    let group_at_risk = at_risk_itself && another_member_evacuated(st, m.group, m.node);
    let sustained =
        act_after_ms > 0 && next.degraded_since_ms.is_some_and(|t| now_ms.saturating_sub(t) >= act_after_ms);
    let cleared =
        next.below_clear_since_ms.is_some_and(|t| now_ms.saturating_sub(t) >= st.cfg().migration_clear_after_ms);
    // A target that fell ill (at warn, or warned about), died or was taken into a group is
    // given up while it holds nothing of the group (cutting over, it is a group member and
    // stays).
    if next.stage == MigrationStage::Preparing {
        if let Some(t) = next.target {
            let ok = st.node(t).is_some_and(|n| n.state == NodeState::Up && n.group.is_none())
                && st.risk(t).is_none_or(|r| r < th.warn)
                && !st.degraded().contains(&t);
            if !ok {
                next.target = None;
            }
        }
    }
    if next.target.is_none() && matches!(next.stage, MigrationStage::Preparing | MigrationStage::CuttingOver) {
        // Not counting this migration's own (lost) target as taken. Written (or not)
        // below with the rest of the change.
        let _persisted_below = st.put_migration(next.clone());
        next.target = st.choose_target(m.node, m.group);
    }
    match next.stage {
        MigrationStage::Preparing => {
            if cleared && !down {
                next.stage = MigrationStage::StoodDown;
            } else if (down || sustained || group_at_risk || risk.is_some_and(|r| r >= th.act))
                && (next.target.is_some() || down)
            {
                next.stage = MigrationStage::CuttingOver;
            }
        }
        MigrationStage::CuttingOver => {}
        MigrationStage::Evacuated => {
            let window_over = next.cause == MigrationCause::Maintenance && !st.in_maintenance(m.node);
            let auto = !matches!(
                next.cause,
                MigrationCause::Manual | MigrationCause::Decommission | MigrationCause::Maintenance
            );
            if window_over || (cleared && auto) {
                next.stage = MigrationStage::Released;
            }
        }
        MigrationStage::StoodDown | MigrationStage::Released => {}
    }
    let in_group = st.group(m.group).is_some_and(|g| g.nodes.contains(&m.node));
    if next.stage == MigrationStage::CuttingOver && in_group && next.target.is_none() {
        // Nothing moved yet (no target was ever found): a failed node that came back, or
        // a risk that cleared, ends the migration.
        if m.cause == MigrationCause::Failed && state == Some(NodeState::Up) {
            next.stage = MigrationStage::Released;
        } else if m.cause == MigrationCause::Risk && cleared {
            next.stage = MigrationStage::StoodDown;
        } else if m.cause == MigrationCause::Maintenance && !st.in_maintenance(m.node) {
            next.stage = MigrationStage::Released;
        }
    }
    if next.stage == MigrationStage::CuttingOver {
        if let Some(t) = next.target {
            out.writes.extend(replace_member(st, m.group, m.node, t));
        }
        let left = st.directory().iter().any(|s| s.replica(m.node).is_some());
        let in_group = st.group(m.group).is_some_and(|g| g.nodes.contains(&m.node));
        if !left && !in_group {
            next.stage = MigrationStage::Evacuated;
            if m.cause == MigrationCause::Decommission {
                // Decommissioned: nothing of the cluster is left on it; gone for good.
                if let Some(mut rec) = st.node(m.node).cloned() {
                    rec.state = NodeState::Removed;
                    out.writes.push(st.put_node(rec));
                }
            }
        }
    }
    next.note = match (next.stage, next.target) {
        (MigrationStage::Preparing | MigrationStage::CuttingOver, None) => {
            "no eligible target: an Up node in no group, at low risk, in a region the group lacks".into()
        }
        _ => String::new(),
    };
    if next.stage != m.stage {
        next.stage_since_ms = now_ms;
        if next.stage.is_finished() {
            next.finished_ms = Some(now_ms);
        }
        out.events.push(next.clone());
    }
    // The timers alone are soft: persisting them every round would cost a meta write per
    // round; a new manager restarts them (delaying a stand-down, or a sustained-warning
    // cut-over, by at most their length).
    let durable = next != m && !only_timer_changed(&m, &next);
    let write = st.put_migration(next);
    if durable {
        out.writes.push(write);
    }
}

/// Is another node of `group` than `node` being evacuated (preparing or cutting over, for its
/// risk or because it is down) while it still votes: a member of the group record, or, once
/// the record names its replacement, still holding replicas until each shard's swap is done?
/// (A brief Suspect or a single warning round is not enough: each needs a migration first.)
fn another_member_evacuated(st: &ClusterState, group: GroupId, node: NodeId) -> bool {
    let members = st.group(group).map(|g| g.nodes.clone()).unwrap_or_default();
    st.migrations()
        .filter(|o| o.group == group && o.node != node)
        .filter(|o| matches!(o.stage, MigrationStage::Preparing | MigrationStage::CuttingOver))
        .any(|o| members.contains(&o.node) || st.directory().iter().any(|s| s.replica(o.node).is_some()))
}

/// Puts `target` in `node`'s place in `group`; the repair policy then moves every shard of
/// the group. Returns the records to persist.
fn replace_member(st: &mut ClusterState, group: GroupId, node: NodeId, target: NodeId) -> Vec<MetaWrite> {
    let Some(mut g) = st.group(group).cloned() else { return Vec::new() };
    let Some(pos) = g.nodes.iter().position(|n| *n == node) else { return Vec::new() };
    if g.nodes.contains(&target) {
        return Vec::new();
    }
    g.nodes[pos] = target;
    let mut writes = vec![st.put_group(g)];
    writes.extend(st.assign_node(node, None));
    writes.extend(st.assign_node(target, Some(group)));
    writes
}

/// Ends migration `id` at `stage` (a finished one) now.
pub(crate) fn finish(st: &mut ClusterState, id: u64, stage: MigrationStage, now_ms: u64) -> Changes {
    debug_assert!(stage.is_finished());
    let mut out = Changes::default();
    let Some(m) = st.migration(id) else { return out };
    let m = Migration { stage, stage_since_ms: now_ms, finished_ms: Some(now_ms), note: String::new(), ..m.clone() };
    out.events.push(m.clone());
    out.writes.push(st.put_migration(m));
    out
}

/// Deletes the oldest finished migrations beyond `max-finished-migrations`.
fn prune_finished(st: &mut ClusterState, out: &mut Changes) {
    let finished: Vec<u64> = st.migrations().filter(|m| !m.holds_node()).map(|m| m.id).collect();
    let excess = finished.len().saturating_sub(st.cfg().max_finished_migrations);
    for id in finished.into_iter().take(excess) {
        out.writes.push(st.remove_migration(id));
    }
}

/// Counts a copy made and verified (once per operator) toward the migration whose target
/// received it; returns its record to persist.
pub(crate) fn note_copy_verified(st: &mut ClusterState, shard: ShardId, node: NodeId) -> Option<MetaWrite> {
    let group = st.group_of(shard)?;
    let size = st.soft(shard).map_or(0, |s| s.size_bytes);
    let m = st.migrations().find(|m| m.holds_node() && m.group == group && m.target == Some(node))?;
    let m = Migration { bytes_copied: m.bytes_copied + size, shards_copied: m.shards_copied + 1, ..m.clone() };
    Some(st.put_migration(m))
}

impl Manager {
    /// Every migration with its progress, newest first.
    pub fn migrations(&self, now_ms: u64) -> Vec<MigrationView> {
        let mut out: Vec<MigrationView> = self.st.migrations().map(|m| self.view(m, now_ms)).collect();
        out.sort_by_key(|v| (v.migration.stage.is_finished(), std::cmp::Reverse(v.migration.id)));
        out
    }

    fn view(&self, m: &Migration, now_ms: u64) -> MigrationView {
        let mut shards_left = 0;
        let mut bytes_left = 0;
        if m.holds_node() {
            for s in self.st.directory().iter() {
                if s.replica(m.node).is_none() {
                    continue;
                }
                let copied = m.target.is_some_and(|t| {
                    m.stage == MigrationStage::Preparing && s.replica(t).is_some() && !self.st.is_busy(s.id)
                });
                if !copied {
                    shards_left += 1;
                    bytes_left += self.st.soft(s.id).map_or(0, |x| x.size_bytes);
                }
            }
        }
        let elapsed_secs = m.finished_ms.unwrap_or(now_ms).saturating_sub(m.started_ms) as f64 / 1000.0;
        let rate = if elapsed_secs > 0.0 { m.bytes_copied as f64 / elapsed_secs } else { 0.0 };
        let eta_secs = (rate > 0.0 && bytes_left > 0).then(|| bytes_left as f64 / rate);
        let running = self
            .st
            .operators()
            .filter(|op| !op.status.is_finished())
            .filter(|op| match &op.kind {
                OperatorKind::ShiftLeader { from } => *from == m.node,
                OperatorKind::PrepareCopy { from, .. } => *from == m.node,
                OperatorKind::MoveReplica { from, to } => {
                    *from == Some(m.node) || (m.target.is_some() && *to == m.target)
                }
                _ => false,
            })
            .map(|op| (op.shard, op.current_step().map_or("done", Step::name).to_string()))
            .collect();
        MigrationView {
            migration: m.clone(),
            risk: self.st.risk(m.node),
            shards_left,
            bytes_left,
            rate_bytes_per_sec: rate,
            eta_secs,
            running,
        }
    }
}

fn only_timer_changed(a: &Migration, b: &Migration) -> bool {
    let mut a = a.clone();
    a.below_clear_since_ms = b.below_clear_since_ms;
    a.degraded_since_ms = b.degraded_since_ms;
    a == *b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ManagerConfig;
    use crate::meta;
    use crate::model::{ClusterMeta, GroupMeta, NodeMeta};
    use crate::state::RiskInputs;

    fn node(id: NodeId, region: &str, group: Option<GroupId>) -> NodeMeta {
        NodeMeta {
            id,
            raft_addr: String::new(),
            client_addr: String::new(),
            resp_addr: String::new(),
            admin_addr: String::new(),
            region: region.into(),
            capacity_bytes: 1 << 30,
            capacity_qps: 0,
            state: NodeState::Up,
            group,
            insecure: false,
        }
    }

    /// Group 1 on nodes 1-3 (regions a-c), node 4 spare in region a, node 1 at `risk`.
    fn cluster(risk: f64) -> ClusterState {
        let cluster = ClusterMeta { cluster_id: 7, replication_factor: 3, next_id: 10, scheduler_paused: false };
        let mut st = ClusterState::new(ManagerConfig::default(), cluster, 0);
        for (id, region, group) in [(1, "a", Some(1)), (2, "b", Some(1)), (3, "c", Some(1)), (4, "a", None)] {
            let _ = st.put_node(node(id, region, group));
        }
        let _ = st.put_group(GroupMeta { id: 1, nodes: vec![1, 2, 3], failures: Vec::new() });
        st.set_risks(RiskInputs { nodes: [(1, risk)].into(), ..RiskInputs::default() });
        st
    }

    #[test]
    fn a_risk_at_warn_starts_a_preparing_migration_and_returns_its_records() {
        let mut st = cluster(0.6);
        let out = update(&mut st, 1_000);
        let m = st.migration_of(1).expect("node 1 is held").clone();
        assert_eq!((m.stage, m.target, m.id), (MigrationStage::Preparing, Some(4), 10));
        assert_eq!(out.events, vec![m.clone()]);
        let keys: Vec<Vec<u8>> = out.writes.iter().map(|w| w.key.clone()).collect();
        assert_eq!(keys, vec![meta::cluster_key(), meta::migration_key(10)], "the id and the record, in order");
        // Nothing changed since: the next round persists nothing and reports nothing.
        let again = update(&mut st, 2_000);
        assert!(again.writes.is_empty() && again.events.is_empty(), "{again:?}");
    }

    #[test]
    fn the_clear_timer_alone_is_not_persisted_but_the_stand_down_is() {
        let mut st = cluster(0.6);
        let _ = update(&mut st, 0);
        st.set_risks(RiskInputs { nodes: [(1, 0.1)].into(), ..RiskInputs::default() });
        let timer = update(&mut st, 1_000);
        assert!(timer.writes.is_empty(), "the timer is soft: {timer:?}");
        assert_eq!(st.migration_of(1).and_then(|m| m.below_clear_since_ms), Some(1_000));
        let clear_after_ms = st.cfg().migration_clear_after_ms;
        let stood_down = update(&mut st, 1_000 + clear_after_ms);
        assert_eq!(stood_down.events.len(), 1);
        assert_eq!(stood_down.events[0].stage, MigrationStage::StoodDown);
        assert_eq!(stood_down.writes.len(), 1, "{stood_down:?}");
        assert!(st.migration_of(1).is_none(), "a stood-down migration holds no node");
    }

    fn degraded(risk: f64) -> RiskInputs {
        RiskInputs { nodes: [(1, risk)].into(), degraded: [1].into(), ..RiskInputs::default() }
    }

    #[test]
    fn a_warning_held_without_a_break_cuts_over_below_act() {
        let mut st = cluster(0.6);
        let act_after_ms = st.cfg().migration_act_after_ms;
        st.set_risks(degraded(0.6));
        let _ = update(&mut st, 0);
        assert_eq!(st.migration_of(1).map(|m| m.stage), Some(MigrationStage::Preparing));
        // Below act, the warning held: preparing until the timer runs out, whatever the
        // risk does between clear and act.
        st.set_risks(degraded(0.45));
        let _ = update(&mut st, act_after_ms - 1);
        assert_eq!(st.migration_of(1).map(|m| m.stage), Some(MigrationStage::Preparing));
        let out = update(&mut st, act_after_ms);
        assert_cut_over(&st);
        assert!(!out.events.is_empty(), "the cut-over is reported: {out:?}");
    }

    #[test]
    fn a_broken_warning_restarts_the_act_timer_and_a_held_one_is_never_clear() {
        let mut st = cluster(0.6);
        let act_after_ms = st.cfg().migration_act_after_ms;
        st.set_risks(degraded(0.6));
        let _ = update(&mut st, 0);
        // The warning clears for a round: the timer starts again when it is back.
        st.set_risks(RiskInputs { nodes: [(1, 0.6)].into(), ..RiskInputs::default() });
        let quiet = update(&mut st, act_after_ms / 2);
        assert!(quiet.writes.is_empty(), "the timer is soft: {quiet:?}");
        st.set_risks(degraded(0.6));
        let _ = update(&mut st, act_after_ms / 2 + 1);
        let _ = update(&mut st, act_after_ms + 1);
        assert_eq!(st.migration_of(1).map(|m| m.stage), Some(MigrationStage::Preparing), "restarted at the break");
        // The risk falls below clear (a node that leads nothing shows the model less) while
        // the warning holds: no stand-down, and the warning alone cuts over.
        st.set_risks(degraded(0.02));
        let _ = update(&mut st, act_after_ms * 3 / 2);
        assert_eq!(st.migration_of(1).and_then(|m| m.below_clear_since_ms), None, "not clear while warned");
        assert_eq!(st.migration_of(1).map(|m| m.stage), Some(MigrationStage::Preparing));
        let _ = update(&mut st, act_after_ms * 3 / 2 + 1);
        assert_cut_over(&st);
    }

    #[test]
    fn a_second_member_being_evacuated_cuts_the_first_over_at_once() {
        let mut st = cluster(0.6);
        // No spare for node 2 (region b): its migration stays preparing.
        let _ = update(&mut st, 0);
        assert_eq!(st.migration_of(1).map(|m| m.stage), Some(MigrationStage::Preparing));
        // A warning about node 2 alone (no migration of its own) or node 2 briefly Suspect
        // changes nothing.
        st.set_risks(RiskInputs { nodes: [(1, 0.6)].into(), degraded: [2].into(), ..RiskInputs::default() });
        let _ = update(&mut st, 1_000);
        let mut n2 = st.node(2).cloned().expect("node 2");
        n2.state = NodeState::Suspect;
        let _ = st.put_node(n2.clone());
        let _ = update(&mut st, 2_000);
        assert_eq!(st.migration_of(1).map(|m| m.stage), Some(MigrationStage::Preparing));
        n2.state = NodeState::Up;
        let _ = st.put_node(n2);
        // Node 2 reaches warn: its own migration starts, and node 1's copies go in now,
        // below act and before any timer (one more failure would lose the quorum).
        st.set_risks(RiskInputs { nodes: [(1, 0.6), (2, 0.6)].into(), ..RiskInputs::default() });
        let _ = update(&mut st, 3_000);
        assert_eq!(st.migration_of(2).map(|m| m.node), Some(2), "node 2 is being evacuated");
        let _ = update(&mut st, 4_000);
        assert_cut_over(&st);
    }

    #[test]
    fn a_member_whose_own_risk_cleared_is_not_cut_over_for_another_and_stands_down() {
        let mut st = cluster(0.6);
        // No spare for node 2 (region b): its migration stays preparing.
        let _ = update(&mut st, 0);
        // Node 1's risk clears, then node 2 starts being evacuated.
        st.set_risks(RiskInputs { nodes: [(1, 0.1), (2, 0.6)].into(), ..RiskInputs::default() });
        let _ = update(&mut st, 1_000);
        assert!(st.migration_of(2).is_some());
        let _ = update(&mut st, 2_000);
        assert_eq!(st.migration_of(1).map(|m| m.stage), Some(MigrationStage::Preparing), "not at risk itself");
        let clear_after_ms = st.cfg().migration_clear_after_ms;
        let _ = update(&mut st, 1_000 + clear_after_ms);
        assert!(st.migration_of(1).is_none(), "stood down although node 2 is still being evacuated");
    }

    /// The spare took node 1's place (with no shards, the cut-over ends in the same round).
    fn assert_cut_over(st: &ClusterState) {
        let stage = st.migrations().find(|m| m.node == 1).map(|m| m.stage);
        assert!(matches!(stage, Some(MigrationStage::CuttingOver | MigrationStage::Evacuated)), "{stage:?}");
        assert_eq!(st.group(1).map(|g| g.nodes.clone()), Some(vec![4, 2, 3]));
    }
}
