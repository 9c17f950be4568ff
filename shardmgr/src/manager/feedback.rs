//! The manager's side of the feedback loop ([`crate::feedback`]): it records each mitigation
//! as it starts (a shed's first leadership move, a shift's start, a risk evacuation's start, a
//! forecast split), follows a forecast split's range for the load that was forecast, judges
//! each record `feedback-judge-ms` later, writes every record to the meta shard, and sets the
//! policies' eagerness each round.

use super::Manager;
use crate::feedback::{judge, Kpis, MitigationKind, MitigationRecord, MAX_SHARDS_PER_RECORD};
use crate::meta::{self, MetaWrite};
use crate::model::{MigrationCause, NodeId, NodeState, ShardId};
use crate::state::Eagerness;

impl Manager {
    /// The service of `shards` now: their p99s weighted by their requests, their errors and
    /// requests per second.
    pub(super) fn kpis_of(&self, shards: impl IntoIterator<Item = ShardId>) -> Kpis {
        let (mut weighted, mut out) = (0.0, Kpis::default());
        for id in shards {
            let Some(load) = self.st.soft(id).map(|x| x.load) else { continue };
            weighted += load.p99_ms * load.qps();
            out.qps += load.qps();
            out.errors_per_sec += load.errors_per_sec;
        }
        out.p99_ms = if out.qps > 0.0 { weighted / out.qps } else { 0.0 };
        out
    }

    /// The shards overlapping `[start, end)`.
    fn shards_in(&self, start: &[u8], end: Option<&[u8]>) -> Vec<ShardId> {
        self.st
            .directory()
            .iter()
            .filter(|s| end.is_none_or(|e| s.start.as_slice() < e) && s.end.as_deref().is_none_or(|e| e > start))
            .map(|s| s.id)
            .collect()
    }

    /// Records a mitigation that starts at `now_ms`.
    pub(super) fn note_mitigation(
        &mut self,
        kind: MitigationKind,
        evidence: &str,
        node: Option<NodeId>,
        mut shards: Vec<ShardId>,
        now_ms: u64,
    ) {
        // The hottest first, then by id.
        let qps = |id: &ShardId| self.st.soft(*id).map_or(0.0, |x| x.load.qps());
        shards.sort_by(|a, b| qps(b).total_cmp(&qps(a)).then(a.cmp(b)));
        shards.truncate(MAX_SHARDS_PER_RECORD);
        let before = self.kpis_of(shards.iter().copied());
        let range = match kind {
            MitigationKind::PreSplit => {
                shards.first().and_then(|id| self.st.directory().get(*id)).map(|s| (s.start.clone(), s.end.clone()))
            }
            _ => None,
        };
        let id = self.alloc_id();
        let record = MitigationRecord {
            id,
            kind,
            evidence: evidence.to_string(),
            node,
            shards,
            started_ms: now_ms,
            before,
            after: None,
            judged_ms: None,
            helped: None,
            node_failed: false,
            range,
        };
        persist_record(&mut self.pending, &record);
        if let Some(dropped) = self.feedback.push(record, self.st.cfg().max_mitigations) {
            self.pending.push(MetaWrite { key: meta::mitigation_key(dropped), value: None });
        }
    }

    /// Records the mitigations the plan about to start makes (a shed's first move, a forecast
    /// split).
    pub(super) fn note_plan(&mut self, kind: &crate::operator::OperatorKind, shard: ShardId, now_ms: u64) {
        use crate::operator::OperatorKind;
        match kind {
            OperatorKind::ShiftLeader { from }
                if self.st.migration_of(*from).is_none()
                    && !self.st.in_maintenance(*from)
                    && !self.feedback.open(MitigationKind::ShedLeaders, *from) =>
            {
                let led: Vec<ShardId> =
                    self.st.directory().iter().filter(|s| s.leader == Some(*from)).map(|s| s.id).collect();
                self.note_mitigation(MitigationKind::ShedLeaders, "degraded", Some(*from), led, now_ms);
            }
            OperatorKind::ForecastSplit => {
                let leader = self.st.directory().get(shard).and_then(|s| s.leader);
                self.note_mitigation(MitigationKind::PreSplit, "forecast", leader, vec![shard], now_ms);
            }
            _ => {}
        }
    }

    /// Records the shifts and risk evacuations that started this round.
    pub(super) fn note_round(&mut self, shifts: Vec<(NodeId, &'static str, Vec<ShardId>)>, now_ms: u64) {
        for (node, cause, shards) in shifts {
            if !self.feedback.open(MitigationKind::Demotion, node) {
                self.note_mitigation(MitigationKind::Demotion, cause, Some(node), shards, now_ms);
            }
        }
        let evacuations: Vec<NodeId> = self
            .st
            .migrations()
            .filter(|m| m.cause == MigrationCause::Risk && m.started_ms == now_ms)
            .map(|m| m.node)
            .collect();
        for node in evacuations {
            let held: Vec<ShardId> =
                self.st.directory().iter().filter(|s| s.replica(node).is_some()).map(|s| s.id).collect();
            self.note_mitigation(MitigationKind::Evacuation, "risk", Some(node), held, now_ms);
        }
    }

    /// Follows open forecast splits' ranges, judges the records that are due, and sets the
    /// policies' eagerness.
    pub(super) fn feedback_round(&mut self, now_ms: u64) {
        let cfg = self.st.cfg().clone();
        let presplit_ms = cfg.feedback_judge_ms.max(cfg.forecast_horizon_ms + cfg.forecast_interval_ms);
        let open: Vec<(u64, Vec<u8>, Option<Vec<u8>>)> = self
            .feedback
            .records()
            .filter(|r| r.helped.is_none())
            .filter_map(|r| r.range.clone().map(|(s, e)| (r.id, s, e)))
            .collect();
        for (id, start, end) in open {
            let now = self.kpis_of(self.shards_in(&start, end.as_deref()));
            if let Some(r) = self.feedback.get_mut(id) {
                let peak = r.after.map_or(0.0, |a| a.qps).max(now.qps);
                r.after = Some(Kpis { qps: peak, ..now });
            }
        }
        for id in self.feedback.due(now_ms, cfg.feedback_judge_ms) {
            let Some(r) = self.feedback.records().find(|r| r.id == id).cloned() else { continue };
            if r.kind == MitigationKind::PreSplit && now_ms.saturating_sub(r.started_ms) < presplit_ms {
                continue;
            }
            let after = match r.kind {
                MitigationKind::PreSplit => r.after.unwrap_or_default(),
                _ => self.kpis_of(r.shards.iter().copied()),
            };
            let node_failed = r.node.is_some_and(|n| self.failed_since(n, r.started_ms));
            let helped = judge(r.kind, &r.evidence, &r.before, &after, node_failed, cfg.load_split_qps);
            let judged = MitigationRecord { after: Some(after), judged_ms: Some(now_ms), helped, node_failed, ..r };
            persist_record(&mut self.pending, &judged);
            if let Some(slot) = self.feedback.get_mut(id) {
                *slot = judged;
            }
        }
        self.st.set_eagerness(Eagerness {
            shed: self.feedback.eagerness(MitigationKind::ShedLeaders, "degraded", now_ms),
            presplit: self.feedback.eagerness(MitigationKind::PreSplit, "forecast", now_ms),
            evacuation: self.feedback.eagerness(MitigationKind::Evacuation, "risk", now_ms),
        });
    }

    /// Did `node` fail (go down, or get a failure recorded) since `since_ms`? Down in a
    /// maintenance window is not a failure.
    fn failed_since(&self, node: NodeId, since_ms: u64) -> bool {
        let down = self.st.node(node).is_some_and(|n| n.state == NodeState::Down) && !self.st.down_excused(node);
        let recorded = self.st.groups().flat_map(|g| g.failures.iter()).any(|f| f.node == node && f.at_ms >= since_ms);
        down || recorded
    }

    /// The mitigations kept, oldest first.
    pub fn mitigations(&self) -> &crate::feedback::Feedback {
        &self.feedback
    }

    /// The feedback report at `now_ms` over `warnings` (node, kind, raised, cleared), with
    /// the failures the groups recorded (`crate::feedback::PfaReport`).
    pub fn pfa_report(
        &self,
        now_ms: u64,
        horizon_ms: u64,
        warnings: &[(NodeId, String, u64, Option<u64>)],
    ) -> crate::feedback::PfaReport {
        let failures: Vec<(NodeId, u64)> =
            self.st.groups().flat_map(|g| g.failures.iter()).map(|f| (f.node, f.at_ms)).collect();
        crate::feedback::PfaReport::build(now_ms, horizon_ms, warnings, &failures, &self.feedback)
    }
}

/// Queues the record's write to the meta shard.
fn persist_record(pending: &mut Vec<MetaWrite>, record: &MitigationRecord) {
    pending.push(meta::put(meta::mitigation_key(record.id), record));
}
