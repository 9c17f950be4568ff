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
//! 2. **Cutting over** (risk >= act, or the node is already down: reactive repair): the
//!    target replaces the node in its replication group; the repair policy then swaps each
//!    shard's copy in and the node's replica out in one joint-consensus change, after
//!    verifying the copy again, and removes the old replica. A failed verification or a
//!    timeout rolls a shard back (the original replica keeps serving) and repair tries again.
//! 3. **Evacuated**: no replica is left on the node; it is held out of groups and leaderships
//!    until its risk has stayed below `clear` for the clear delay (then **Released**: a spare
//!    again). A manual evacuation is never released automatically.
//! 4. **Stood down** (while preparing, risk below clear for the clear delay): the prepared
//!    learners are no longer anyone's target, so repair removes them; voters never moved.
//!
//! Every step is an operator (idempotent, judged from reported state, resumable after a
//! manager fail-over); the migration record itself changes only on stage transitions.

use super::Manager;
use crate::model::{GroupId, Migration, MigrationCause, MigrationStage, MigrationView, NodeId, NodeState, ShardId};
use crate::operator::{OperatorKind, Step};

impl Manager {
    /// Starts, advances and finishes migrations (module docs); called every round before
    /// group formation and the policies.
    pub(crate) fn update_migrations(&mut self, now_ms: u64) {
        let th = self.st.cfg.thresholds();
        // New migrations: grouped nodes that went down, or (when proactive) whose risk
        // reached `warn`.
        let proactive = self.st.cfg.proactive_migration;
        let starts: Vec<(NodeId, GroupId, MigrationCause)> = self
            .st
            .nodes
            .values()
            .filter(|n| !self.st.is_held(n.id))
            .filter_map(|n| {
                let group = n.group?;
                let risk = self.st.risks.get(&n.id).copied();
                match n.state {
                    NodeState::Down => Some((n.id, group, MigrationCause::Failed)),
                    NodeState::Up | NodeState::Suspect if proactive && risk.is_some_and(|r| r >= th.warn) => {
                        Some((n.id, group, MigrationCause::Risk))
                    }
                    _ => None,
                }
            })
            .collect();
        for (node, group, cause) in starts {
            let stage =
                if cause == MigrationCause::Risk { MigrationStage::Preparing } else { MigrationStage::CuttingOver };
            self.start_migration(node, group, cause, stage, now_ms);
        }
        let active: Vec<u64> = self.st.migrations.values().filter(|m| m.holds_node()).map(|m| m.id).collect();
        for id in active {
            self.advance_migration(id, now_ms);
        }
        self.prune_finished_migrations();
    }

    /// Records a new migration of `node` (the caller checked it is not held).
    pub(crate) fn start_migration(
        &mut self,
        node: NodeId,
        group: GroupId,
        cause: MigrationCause,
        stage: MigrationStage,
        now_ms: u64,
    ) -> u64 {
        let id = self.alloc_id();
        let risk = self.st.risks.get(&node).copied();
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
            finished_ms: None,
            bytes_copied: 0,
            shards_copied: 0,
            note: String::new(),
        };
        m.target = self.st.choose_target(node, group);
        self.migration_events.push(m.clone());
        self.st.migrations.insert(id, m);
        self.persist_migration(id);
        id
    }

    fn advance_migration(&mut self, id: u64, now_ms: u64) {
        let th = self.st.cfg.thresholds();
        let Some(m) = self.st.migrations.get(&id).cloned() else { return };
        let mut next = m.clone();
        let state = self.st.nodes.get(&m.node).map(|n| n.state);
        let down = matches!(state, Some(NodeState::Down | NodeState::Removed) | None);
        let risk = self.st.risks.get(&m.node).copied();
        // The stand-down / release timer: risk below clear, continuously. An unknown risk
        // (no model) counts as clear only for a node that failed and came back: a warning
        // needs a known risk to end.
        let clear = match risk {
            Some(r) => r < th.clear,
            None => m.cause == MigrationCause::Failed && state == Some(NodeState::Up),
        };
        next.below_clear_since_ms = (clear && !down).then(|| m.below_clear_since_ms.unwrap_or(now_ms));
        let cleared =
            next.below_clear_since_ms.is_some_and(|t| now_ms.saturating_sub(t) >= self.st.cfg.migration_clear_after_ms);
        // A target that fell ill, died or was taken into a group is given up while it
        // holds nothing of the group (cutting over, it is a group member and stays).
        if next.stage == MigrationStage::Preparing {
            if let Some(t) = next.target {
                let ok = self.st.nodes.get(&t).is_some_and(|n| n.state == NodeState::Up && n.group.is_none())
                    && self.st.risks.get(&t).is_none_or(|r| *r < th.warn);
                if !ok {
                    next.target = None;
                }
            }
        }
        if next.target.is_none() && matches!(next.stage, MigrationStage::Preparing | MigrationStage::CuttingOver) {
            // Not counting this migration's own (lost) target as taken.
            self.st.migrations.insert(id, next.clone());
            next.target = self.st.choose_target(m.node, m.group);
        }
        match next.stage {
            MigrationStage::Preparing => {
                if down || risk.is_some_and(|r| r >= th.act) {
                    if next.target.is_some() || down {
                        next.stage = MigrationStage::CuttingOver;
                    }
                } else if cleared {
                    next.stage = MigrationStage::StoodDown;
                }
            }
            MigrationStage::CuttingOver => {}
            MigrationStage::Evacuated => {
                if cleared && next.cause != MigrationCause::Manual {
                    next.stage = MigrationStage::Released;
                }
            }
            MigrationStage::StoodDown | MigrationStage::Released => {}
        }
        let in_group = self.st.groups.get(&m.group).is_some_and(|g| g.nodes.contains(&m.node));
        if next.stage == MigrationStage::CuttingOver && in_group && next.target.is_none() {
            // Nothing moved yet (no target was ever found): a failed node that came back, or
            // a risk that cleared, ends the migration.
            if m.cause == MigrationCause::Failed && state == Some(NodeState::Up) {
                next.stage = MigrationStage::Released;
            } else if m.cause == MigrationCause::Risk && cleared {
                next.stage = MigrationStage::StoodDown;
            }
        }
        if next.stage == MigrationStage::CuttingOver {
            if let Some(t) = next.target {
                self.replace_member(m.group, m.node, t);
            }
            let left = self.st.directory.iter().any(|s| s.replica(m.node).is_some());
            let in_group = self.st.groups.get(&m.group).is_some_and(|g| g.nodes.contains(&m.node));
            if !left && !in_group {
                next.stage = MigrationStage::Evacuated;
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
            self.migration_events.push(next.clone());
        }
        let changed = next != m;
        self.st.migrations.insert(id, next);
        // The timer alone is soft: persisting it every round would cost a meta write per
        // round; a new manager restarts it (it only delays a stand-down).
        if changed && !only_timer_changed(&m, &self.st.migrations[&id]) {
            self.persist_migration(id);
        }
    }

    /// Puts `target` in `node`'s place in `group` (persisted); the repair policy then moves
    /// every shard of the group.
    fn replace_member(&mut self, group: GroupId, node: NodeId, target: NodeId) {
        let Some(g) = self.st.groups.get_mut(&group) else { return };
        let Some(pos) = g.nodes.iter().position(|n| *n == node) else { return };
        if g.nodes.contains(&target) {
            return;
        }
        g.nodes[pos] = target;
        let rec = g.clone();
        self.pending.push(crate::meta::put(crate::meta::group_key(group), &rec));
        for (id, grp) in [(node, None), (target, Some(group))] {
            if let Some(n) = self.st.nodes.get_mut(&id) {
                n.group = grp;
                let rec = n.clone();
                self.pending.push(crate::meta::put(crate::meta::node_key(id), &rec));
            }
        }
    }

    /// Ends migration `id` at `stage` (a finished one) now: recorded, persisted, reported.
    pub(crate) fn finish_migration(&mut self, id: u64, stage: MigrationStage, now_ms: u64) {
        debug_assert!(stage.is_finished());
        let Some(m) = self.st.migrations.get_mut(&id) else { return };
        m.stage = stage;
        m.stage_since_ms = now_ms;
        m.finished_ms = Some(now_ms);
        m.note = String::new();
        let rec = m.clone();
        self.migration_events.push(rec);
        self.persist_migration(id);
    }

    pub(crate) fn persist_migration(&mut self, id: u64) {
        if let Some(m) = self.st.migrations.get(&id) {
            self.pending.push(crate::meta::put(crate::meta::migration_key(id), m));
        }
    }

    fn prune_finished_migrations(&mut self) {
        let finished: Vec<u64> = self.st.migrations.values().filter(|m| !m.holds_node()).map(|m| m.id).collect();
        let excess = finished.len().saturating_sub(self.st.cfg.max_finished_migrations);
        for id in finished.into_iter().take(excess) {
            self.st.migrations.remove(&id);
            self.pending.push(crate::meta::MetaWrite { key: crate::meta::migration_key(id), value: None });
        }
    }

    /// Counts a copy made and verified (once per operator) toward the migration whose
    /// target received it.
    pub(crate) fn note_copy_verified(&mut self, shard: ShardId, node: NodeId) {
        let Some(group) = self.st.placement.get(&shard).map(|p| p.group) else { return };
        let size = self.st.soft.get(&shard).map_or(0, |s| s.size_bytes);
        let Some(id) = self
            .st
            .migrations
            .values()
            .find(|m| m.holds_node() && m.group == group && m.target == Some(node))
            .map(|m| m.id)
        else {
            return;
        };
        if let Some(m) = self.st.migrations.get_mut(&id) {
            m.bytes_copied += size;
            m.shards_copied += 1;
        }
        self.persist_migration(id);
    }

    /// Every migration with its progress, newest first.
    pub fn migrations(&self, now_ms: u64) -> Vec<MigrationView> {
        let mut out: Vec<MigrationView> = self.st.migrations.values().map(|m| self.view(m, now_ms)).collect();
        out.sort_by_key(|v| (v.migration.stage.is_finished(), std::cmp::Reverse(v.migration.id)));
        out
    }

    fn view(&self, m: &Migration, now_ms: u64) -> MigrationView {
        let mut shards_left = 0;
        let mut bytes_left = 0;
        if m.holds_node() {
            for s in self.st.directory.iter() {
                if s.replica(m.node).is_none() {
                    continue;
                }
                let copied = m.target.is_some_and(|t| {
                    m.stage == MigrationStage::Preparing && s.replica(t).is_some() && !self.st.busy.contains_key(&s.id)
                });
                if !copied {
                    shards_left += 1;
                    bytes_left += self.st.soft.get(&s.id).map_or(0, |x| x.size_bytes);
                }
            }
        }
        let elapsed_secs = m.finished_ms.unwrap_or(now_ms).saturating_sub(m.started_ms) as f64 / 1000.0;
        let rate = if elapsed_secs > 0.0 { m.bytes_copied as f64 / elapsed_secs } else { 0.0 };
        let eta_secs = (rate > 0.0 && bytes_left > 0).then(|| bytes_left as f64 / rate);
        let running = self
            .st
            .operators
            .values()
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
            risk: self.st.risks.get(&m.node).copied(),
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
    a == *b
}
