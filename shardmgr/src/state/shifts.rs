//! The cluster state's per-range risk and gradual shifts (`crate::range_risk`,
//! `crate::shift`), and the feedback loop's eagerness the policies read (`crate::feedback`).

use std::collections::{BTreeMap, HashMap};

use super::{ClusterState, Eagerness};
use crate::model::{NodeId, ShardId};
use crate::shift::Shift;

impl ClusterState {
    /// Every shard's risk (`crate::range_risk`) from its voters' node risks and its last
    /// reported p99 and errors (against the median shard's p99).
    pub(crate) fn range_risks(&self) -> HashMap<ShardId, crate::range_risk::RangeRisk> {
        let median = crate::range_risk::median_p99_ms(self.soft.values().map(|s| &s.load));
        self.directory
            .iter()
            .map(|s| {
                let voters: Vec<(NodeId, Option<f64>)> = s.voters().into_iter().map(|n| (n, self.risk(n))).collect();
                let load = self.soft(s.id).map(|x| x.load).unwrap_or_default();
                (s.id, crate::range_risk::range_risk(&voters, s.leader, &load, median))
            })
            .collect()
    }

    /// Derives this round's demotable ranges and updates the shifts (`crate::shift`; none with
    /// `proactive-migration` off, the reactive mode): a range qualifies when its risk from its leader reaches `range-risk-shift`, its leader is not
    /// already shedding or being evacuated (at `risk-warn` migration takes over), a voter that
    /// may lead is safer, and it was not moved within `leader-move-hold-ms`.
    /// Returns the shifts started this round: node, the evidence (the riskiest range's cause)
    /// and the ranges. `eagerness(cause)` divides the threshold (`crate::feedback`).
    pub(crate) fn update_shifts(
        &mut self,
        now_ms: u64,
        may_lead: impl Fn(&ClusterState, NodeId) -> bool,
        eagerness: impl Fn(&str) -> f64,
    ) -> Vec<(NodeId, &'static str, Vec<ShardId>)> {
        let risks = if self.cfg.proactive_migration { self.range_risks() } else { HashMap::new() };
        let (base, hold) = (self.cfg.range_risk_shift, self.cfg.leader_move_hold_ms);
        let mut demotable: BTreeMap<NodeId, Vec<(ShardId, NodeId, f64, &'static str)>> = BTreeMap::new();
        for s in self.directory.iter().filter(|s| !ClusterState::is_meta(s)) {
            let (Some(leader), Some(r)) = (s.leader, risks.get(&s.id)) else { continue };
            let node_risk = |n: NodeId| self.risk(n).unwrap_or(0.0);
            let (from_leader, cause) = [(node_risk(leader), "nodes"), (r.latency, "latency"), (r.errors, "errors")]
                .into_iter()
                .fold((0.0, "nodes"), |best, x| if x.0 > best.0 { x } else { best });
            let threshold = base / eagerness(cause).max(f64::MIN_POSITIVE);
            let held = self.balance_moved_ms(s.id).is_some_and(|t| now_ms.saturating_sub(t) < hold);
            if from_leader < threshold || held || self.sheds_leaders(leader) || self.migration_of(leader).is_some() {
                continue;
            }
            // The safest voter that may lead; safer than the leader when the node is the cause.
            let to = s
                .voters()
                .into_iter()
                .filter(|v| *v != leader && may_lead(self, *v) && node_risk(*v) < threshold)
                .filter(|v| node_risk(*v) < node_risk(leader) || node_risk(leader) < threshold)
                .min_by(|a, b| node_risk(*a).total_cmp(&node_risk(*b)).then(a.cmp(b)));
            if let Some(to) = to {
                demotable.entry(leader).or_default().push((s.id, to, from_leader, cause));
            }
        }
        let mut started = Vec::new();
        // A shift that ended within the hold (a p99 flickering around the threshold) is
        // reopened where it was, not started again.
        let rest_ms = hold.max(self.cfg.shift_period_ms);
        for (node, ranges) in demotable.iter_mut() {
            ranges.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)));
            match self.shifts.get_mut(node) {
                Some(s) if s.finished_ms.is_some_and(|t| now_ms.saturating_sub(t) < rest_ms) => s.finished_ms = None,
                Some(s) if s.finished_ms.is_none() => {}
                _ => {
                    self.shifts.insert(*node, Shift::start(*node, now_ms, ranges.len()));
                    started.push((*node, ranges[0].3, ranges.iter().map(|r| r.0).collect()));
                }
            }
            if let Some(shift) = self.shifts.get_mut(node) {
                shift.observe(ranges.len());
            }
        }
        let period = self.cfg.shift_period_ms;
        for (node, shift) in self.shifts.iter_mut() {
            if shift.finished_ms.is_none() && !demotable.contains_key(node) {
                shift.finished_ms = Some(now_ms);
            }
            shift.weight = if shift.finished_ms.is_some() { 1.0 } else { shift.weight_at(now_ms, period) };
        }
        self.shifts.retain(|_, s| s.finished_ms.is_none_or(|t| now_ms.saturating_sub(t) < rest_ms.max(60_000)));
        self.demotable = demotable
            .into_iter()
            .map(|(node, v)| (node, v.into_iter().map(|(s, to, _, _)| (s, to)).collect()))
            .collect();
        started
    }

    /// The feedback loop's eagerness now.
    pub(crate) fn eagerness(&self) -> Eagerness {
        self.eagerness
    }

    /// Sets the feedback loop's eagerness for this round.
    pub(crate) fn set_eagerness(&mut self, e: Eagerness) {
        debug_assert!([e.shed, e.presplit, e.evacuation].iter().all(|x| *x > 0.0 && *x <= 1.0));
        self.eagerness = e;
    }

    /// The shifts running and recently finished.
    pub(crate) fn shifts(&self) -> impl Iterator<Item = &Shift> + '_ {
        self.shifts.values()
    }

    /// Is `node` being demoted (a shift running), or at a failure risk that would demote
    /// what it leads (with proactive migration on)? It is then given no leadership.
    pub(crate) fn is_demoted(&self, node: NodeId) -> bool {
        let risky = self.cfg.proactive_migration && self.risk(node).is_some_and(|r| r >= self.cfg.range_risk_shift);
        risky || self.shifts.get(&node).is_some_and(|s| s.finished_ms.is_none())
    }

    /// `node`'s demotable ranges with their targets, riskiest first (this round's).
    pub(crate) fn demotable(&self, node: NodeId) -> &[(ShardId, NodeId)] {
        self.demotable.get(&node).map_or(&[], Vec::as_slice)
    }

    /// Notes that a demotion of `shard` off `from` started.
    pub(crate) fn note_demotion(&mut self, from: NodeId, shard: ShardId, now_ms: u64) {
        if let Some(s) = self.shifts.get_mut(&from) {
            s.moved += 1;
        }
        self.note_balance_move(shard, now_ms);
    }
}
