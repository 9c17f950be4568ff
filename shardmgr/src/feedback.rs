//! The feedback loop (seed 004): every mitigation the shard manager starts is recorded with the
//! service of the ranges it touched before and after, judged, and a mitigation that did not
//! help makes the next one on the same evidence less eager.
//!
//! - **Kinds**: a degraded node shedding its leaderships (evidence `degraded`), a gradual
//!   shift demoting a node's risky ranges (evidence: the cause, `nodes`, `latency` or
//!   `errors`), a proactive evacuation (`risk`), and a split made for a forecast (`forecast`).
//! - **Before / after**: the touched ranges' [`Kpis`] (their load-weighted p99, errors and
//!   requests per second) when the mitigation starts and `feedback-judge-ms` later.
//! - **Judgement** ([`judge`]): helped when the node it acted on failed within the window (the
//!   mitigation took the ranges off a dying node), or the p99 fell to [`P99_BETTER`] of what
//!   it was, or the errors halved; a forecast split helped when the forecast load came (the
//!   ranges reached half the load-split threshold). Neutral (counted neither way) when the
//!   ranges had no requests before or after, or when a preventive mitigation (evidence
//!   `nodes`, `risk`, `degraded`: it acts before anything is wrong) left the service no worse.
//!   Otherwise it did not help.
//! - **Eagerness** per kind and evidence: `0.5^(n)`, `n` being the unhelpful judgements among
//!   the last [`EAGERNESS_WINDOW`] of that kind and evidence made within [`MEMORY_MS`] minus
//!   the helpful ones, between 0 and [`MAX_RELUCTANCE`]: a lesson fades after a day. The policies divide their thresholds by it (a range is demoted
//!   at `range-risk-shift / eagerness`, a shard split for its forecast at `load-split-qps /
//!   eagerness`) or multiply their pace by it (leaderships shed per round).
//! - **Bounded and persisted**: at most `max-mitigations` records, each one meta-shard record
//!   (`\xffm/x/{id}`) written when it starts and when it is judged, so a new manager keeps the
//!   lessons.
//!
//! Pure: time comes in as `now_ms`.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::model::{NodeId, ShardId};

/// A p99 at most this share of the one before is an improvement.
pub const P99_BETTER: f64 = 0.8;
/// Judged mitigations of one kind and evidence that set its eagerness.
pub const EAGERNESS_WINDOW: usize = 8;
/// At most this many halvings of eagerness.
pub const MAX_RELUCTANCE: i32 = 3;
/// Shards a record keeps (the hottest a mitigation touched).
pub const MAX_SHARDS_PER_RECORD: usize = 64;
/// Judgements older than this no longer set the eagerness, ms.
pub const MEMORY_MS: u64 = 86_400_000;

/// What kind of mitigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MitigationKind {
    /// A degraded node's leaderships moved away at once.
    ShedLeaders,
    /// A gradual shift of a node's risky ranges (`crate::shift`).
    Demotion,
    /// A proactive evacuation of a node at risk.
    Evacuation,
    /// A split ahead of forecast load.
    PreSplit,
}

/// The service of a set of ranges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Kpis {
    /// Their p99s weighted by their requests, ms.
    pub p99_ms: f64,
    /// Requests they failed per second.
    pub errors_per_sec: f64,
    /// Requests per second.
    pub qps: f64,
}

/// One mitigation and what came of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MitigationRecord {
    /// Its id (from the cluster's id allocator).
    pub id: u64,
    /// Its kind.
    pub kind: MitigationKind,
    /// The evidence it acted on.
    pub evidence: String,
    /// The node it acted on, if one.
    pub node: Option<NodeId>,
    /// The ranges it touched (at most [`MAX_SHARDS_PER_RECORD`]).
    pub shards: Vec<ShardId>,
    /// When it started (ms, manager clock).
    pub started_ms: u64,
    /// The ranges' service then.
    pub before: Kpis,
    /// Their service when judged.
    pub after: Option<Kpis>,
    /// When it was judged.
    pub judged_ms: Option<u64>,
    /// Whether it helped (module docs); `None` until judged, or judged neutral.
    pub helped: Option<bool>,
    /// The node failed within the window.
    #[serde(default)]
    pub node_failed: bool,
    /// A forecast split: the parent's key range (`[start, end)`, `None`: to the end), whose
    /// shards' highest load in the window is `after.qps`.
    #[serde(default)]
    pub range: Option<(Vec<u8>, Option<Vec<u8>>)>,
}

/// What became of one early warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WarningOutcome {
    /// The node failed within the horizon after it was raised.
    PrecededFailure,
    /// The horizon passed with no failure of the node.
    FalseAlarm,
    /// Neither yet.
    Open,
}

/// One early warning as the report judges it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WarningJudged {
    /// The node warned about.
    pub node: NodeId,
    /// The warning's kind.
    pub kind: String,
    /// When it was raised, Unix ms.
    pub raised_ms: u64,
    /// When it cleared, if it did.
    pub cleared_ms: Option<u64>,
    /// What came of it.
    pub outcome: WarningOutcome,
    /// When the node failed, if it did within the horizon.
    pub failed_ms: Option<u64>,
}

/// One day of the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportDay {
    /// The day's start, Unix ms (UTC).
    pub day_ms: u64,
    /// Warnings raised that day that preceded a failure.
    pub warnings_preceding_failure: u64,
    /// Warnings raised that day that were false.
    pub false_alarms: u64,
    /// Warnings raised that day not judged yet.
    pub warnings_open: u64,
    /// Mitigations started that day that helped.
    pub mitigations_helped: u64,
    /// Mitigations started that day that did not.
    pub mitigations_not_helped: u64,
    /// Mitigations started that day judged neither way (module docs).
    pub mitigations_neutral: u64,
    /// Mitigations started that day not judged yet.
    pub mitigations_pending: u64,
}

/// A kind's and evidence's eagerness now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EagernessRow {
    /// The mitigation kind.
    pub kind: MitigationKind,
    /// The evidence.
    pub evidence: String,
    /// Its eagerness, (0, 1].
    pub eagerness: f64,
}

/// `presage-ctl pfa report`: over time, warnings that preceded a failure and false ones, and
/// mitigations that helped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PfaReport {
    /// When it was made, Unix ms.
    pub now_ms: u64,
    /// A warning followed by its node's failure within this long preceded it, ms.
    pub horizon_ms: u64,
    /// Per day, oldest first.
    pub days: Vec<ReportDay>,
    /// The warnings the shard manager's node kept, newest first.
    pub warnings: Vec<WarningJudged>,
    /// The mitigations kept, newest first.
    pub mitigations: Vec<MitigationRecord>,
    /// Each kind and evidence seen, with its eagerness now.
    pub eagerness: Vec<EagernessRow>,
}

/// One day, ms.
const DAY_MS: u64 = 86_400_000;

impl PfaReport {
    /// The report at `now_ms` from the warnings (node, kind, raised, cleared), the failures
    /// (node, when) and the feedback's records; a warning preceded a failure when its node
    /// failed within `horizon_ms` after it was raised.
    pub fn build(
        now_ms: u64,
        horizon_ms: u64,
        warnings: &[(NodeId, String, u64, Option<u64>)],
        failures: &[(NodeId, u64)],
        feedback: &Feedback,
    ) -> PfaReport {
        let mut judged: Vec<WarningJudged> = warnings
            .iter()
            .map(|(node, kind, raised, cleared)| {
                let failed_ms = failures
                    .iter()
                    .filter(|(n, at)| n == node && *at >= *raised && *at <= raised.saturating_add(horizon_ms))
                    .map(|(_, at)| *at)
                    .min();
                let outcome = match failed_ms {
                    Some(_) => WarningOutcome::PrecededFailure,
                    None if now_ms >= raised.saturating_add(horizon_ms) => WarningOutcome::FalseAlarm,
                    None => WarningOutcome::Open,
                };
                WarningJudged {
                    node: *node,
                    kind: kind.clone(),
                    raised_ms: *raised,
                    cleared_ms: *cleared,
                    outcome,
                    failed_ms,
                }
            })
            .collect();
        judged.sort_by(|a, b| b.raised_ms.cmp(&a.raised_ms).then(a.node.cmp(&b.node)));
        let mut days: std::collections::BTreeMap<u64, ReportDay> = std::collections::BTreeMap::new();
        let day = |t: u64| t - t % DAY_MS;
        for w in &judged {
            let d = days
                .entry(day(w.raised_ms))
                .or_insert_with(|| ReportDay { day_ms: day(w.raised_ms), ..Default::default() });
            match w.outcome {
                WarningOutcome::PrecededFailure => d.warnings_preceding_failure += 1,
                WarningOutcome::FalseAlarm => d.false_alarms += 1,
                WarningOutcome::Open => d.warnings_open += 1,
            }
        }
        for r in feedback.records() {
            let d = days
                .entry(day(r.started_ms))
                .or_insert_with(|| ReportDay { day_ms: day(r.started_ms), ..Default::default() });
            match (r.judged_ms, r.helped) {
                (Some(_), Some(true)) => d.mitigations_helped += 1,
                (Some(_), Some(false)) => d.mitigations_not_helped += 1,
                (Some(_), None) => d.mitigations_neutral += 1,
                (None, _) => d.mitigations_pending += 1,
            }
        }
        let mut seen: Vec<(MitigationKind, String)> =
            feedback.records().map(|r| (r.kind, r.evidence.clone())).collect();
        seen.sort();
        seen.dedup();
        PfaReport {
            now_ms,
            horizon_ms,
            days: days.into_values().collect(),
            warnings: judged,
            mitigations: feedback.records().rev().cloned().collect(),
            eagerness: seen
                .into_iter()
                .map(|(kind, evidence)| {
                    let eagerness = feedback.eagerness(kind, &evidence, now_ms);
                    EagernessRow { kind, evidence, eagerness }
                })
                .collect(),
        }
    }
}

/// Did a mitigation on `evidence` help (`Some(true)`), not help (`Some(false)`) or neither
/// (`None`), given the ranges' service `before` and `after`, whether its node failed, and (for
/// a forecast split) the load-split threshold? (Module docs.)
pub fn judge(
    kind: MitigationKind,
    evidence: &str,
    before: &Kpis,
    after: &Kpis,
    node_failed: bool,
    split_qps: f64,
) -> Option<bool> {
    if node_failed {
        return Some(true);
    }
    if kind == MitigationKind::PreSplit {
        return Some(after.qps >= split_qps / 2.0);
    }
    if before.qps <= 0.0 || after.qps <= 0.0 {
        return None;
    }
    let p99_better = before.p99_ms > 0.0 && after.p99_ms <= before.p99_ms * P99_BETTER;
    let errors_better = before.errors_per_sec > 0.0 && after.errors_per_sec <= before.errors_per_sec / 2.0;
    if p99_better || errors_better {
        return Some(true);
    }
    let worse = after.p99_ms > before.p99_ms / P99_BETTER || after.errors_per_sec > before.errors_per_sec * 2.0;
    let preventive = matches!(evidence, "nodes" | "risk" | "degraded");
    if preventive && !worse {
        None
    } else {
        Some(false)
    }
}

/// The records, oldest first, at most `max` of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Feedback {
    records: VecDeque<MitigationRecord>,
}

impl Feedback {
    /// Records read back from the meta shard (the newest `max`); returns the ids of those
    /// dropped, to delete.
    pub fn recover(mut records: Vec<MitigationRecord>, max: usize) -> (Feedback, Vec<u64>) {
        records.sort_by_key(|r| r.id);
        let drop = records.len().saturating_sub(max);
        let dropped = records.drain(..drop).map(|r| r.id).collect();
        (Feedback { records: records.into() }, dropped)
    }

    /// Adds a record; returns the id of the oldest one dropped to stay within `max`.
    pub fn push(&mut self, record: MitigationRecord, max: usize) -> Option<u64> {
        debug_assert!(max > 0);
        self.records.push_back(record);
        (self.records.len() > max).then(|| self.records.pop_front().map(|r| r.id)).flatten()
    }

    /// The records, oldest first.
    pub fn records(&self) -> impl DoubleEndedIterator<Item = &MitigationRecord> + '_ {
        self.records.iter()
    }

    /// Is a record of `kind` on `node` still waiting for its judgement?
    pub fn open(&self, kind: MitigationKind, node: NodeId) -> bool {
        self.records.iter().any(|r| r.kind == kind && r.node == Some(node) && r.judged_ms.is_none())
    }

    /// The records due for judgement at `now_ms` (started `judge_ms` ago or more).
    pub fn due(&self, now_ms: u64, judge_ms: u64) -> Vec<u64> {
        self.records
            .iter()
            .filter(|r| r.judged_ms.is_none() && now_ms.saturating_sub(r.started_ms) >= judge_ms)
            .map(|r| r.id)
            .collect()
    }

    /// The record `id`, to judge.
    pub fn get_mut(&mut self, id: u64) -> Option<&mut MitigationRecord> {
        self.records.iter_mut().find(|r| r.id == id)
    }

    /// How eager the next mitigation of `kind` on `evidence` should be, in (0, 1] (module
    /// docs).
    pub fn eagerness(&self, kind: MitigationKind, evidence: &str, now_ms: u64) -> f64 {
        let judged = self
            .records
            .iter()
            .rev()
            .filter(|r| r.kind == kind && r.evidence == evidence)
            .filter(|r| r.judged_ms.is_some_and(|t| now_ms.saturating_sub(t) < MEMORY_MS))
            .filter_map(|r| r.helped)
            .take(EAGERNESS_WINDOW);
        let reluctance: i32 = judged.map(|h| if h { -1 } else { 1 }).sum();
        0.5f64.powi(reluctance.clamp(0, MAX_RELUCTANCE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, kind: MitigationKind, helped: Option<bool>) -> MitigationRecord {
        MitigationRecord {
            id,
            kind,
            evidence: "latency".into(),
            node: Some(2),
            shards: vec![7],
            started_ms: id * 1_000,
            before: Kpis::default(),
            after: None,
            judged_ms: helped.map(|_| id * 1_000),
            helped,
            node_failed: false,
            range: None,
        }
    }

    #[test]
    fn the_report_tells_warnings_that_preceded_a_failure_from_false_ones_per_day() {
        let hour = 3_600_000;
        let day = 86_400_000;
        let warnings = vec![
            (1, "disk-degradation".to_string(), day + hour, None),
            (2, "cpu-overload".to_string(), day + 2 * hour, Some(day + 3 * hour)),
            (3, "disk-degradation".to_string(), 2 * day + hour, None),
        ];
        // Node 1 failed 5 h after its warning; node 2 never; node 3's horizon has not passed.
        let failures = vec![(1, day + 6 * hour), (2, day - hour)];
        let mut f = Feedback::default();
        f.push(record(1, MitigationKind::ShedLeaders, Some(true)), 10);
        f.push(MitigationRecord { started_ms: day + hour, ..record(2, MitigationKind::Demotion, Some(false)) }, 10);
        let now = 2 * day + 2 * hour;
        let r = PfaReport::build(now, 12 * hour, &warnings, &failures, &f);
        let outcome = |n: u64| r.warnings.iter().find(|w| w.node == n).map(|w| w.outcome);
        assert_eq!(outcome(1), Some(WarningOutcome::PrecededFailure));
        assert_eq!(outcome(2), Some(WarningOutcome::FalseAlarm), "a failure before the warning does not count");
        assert_eq!(outcome(3), Some(WarningOutcome::Open));
        assert_eq!(r.warnings[0].node, 3, "newest first");
        let d1 = r.days.iter().find(|d| d.day_ms == day).expect("day 1");
        assert_eq!((d1.warnings_preceding_failure, d1.false_alarms, d1.mitigations_not_helped), (1, 1, 1));
        assert_eq!(r.days[0].mitigations_helped, 1, "the first record started on day 0");
        assert_eq!(r.eagerness.len(), 2);
        let json = serde_json::to_string(&r).expect("encode");
        assert!(
            json.contains("\"outcome\":\"preceded-failure\"") && json.contains("\"kind\":\"shed-leaders\""),
            "{json}"
        );
    }

    #[test]
    fn a_mitigation_helps_when_the_node_failed_or_the_service_improved() {
        use MitigationKind::*;
        let before = Kpis { p99_ms: 40.0, errors_per_sec: 2.0, qps: 100.0 };
        let same = before;
        let faster = Kpis { p99_ms: 10.0, ..before };
        let slower = Kpis { p99_ms: 90.0, ..before };
        let fewer_errors = Kpis { errors_per_sec: 0.5, ..before };
        assert_eq!(judge(Demotion, "latency", &before, &same, false, 1e3), Some(false));
        assert_eq!(judge(Demotion, "latency", &before, &same, true, 1e3), Some(true), "the node died");
        assert_eq!(judge(ShedLeaders, "degraded", &before, &faster, false, 1e3), Some(true));
        assert_eq!(judge(Evacuation, "risk", &before, &fewer_errors, false, 1e3), Some(true));
        assert_eq!(judge(Evacuation, "risk", &before, &same, false, 1e3), None, "preventive, no worse: neutral");
        assert_eq!(judge(Demotion, "nodes", &before, &slower, false, 1e3), Some(false), "preventive but worse");
        let idle = Kpis::default();
        assert_eq!(judge(Demotion, "latency", &idle, &same, false, 1e3), None, "no traffic to judge by");
        let cold = Kpis { qps: 100.0, ..Kpis::default() };
        let hot = Kpis { qps: 900.0, ..Kpis::default() };
        assert_eq!(judge(PreSplit, "forecast", &cold, &cold, false, 1e3), Some(false), "the spike never came");
        assert_eq!(judge(PreSplit, "forecast", &cold, &hot, false, 1e3), Some(true));
    }

    #[test]
    fn unhelpful_mitigations_halve_the_eagerness_of_their_kind_and_evidence_only() {
        let mut f = Feedback::default();
        assert_eq!(f.eagerness(MitigationKind::Demotion, "latency", 20_000), 1.0);
        for id in 1..=2 {
            assert_eq!(f.push(record(id, MitigationKind::Demotion, Some(false)), 10), None);
        }
        assert_eq!(f.eagerness(MitigationKind::Demotion, "latency", 20_000), 0.25);
        assert_eq!(f.eagerness(MitigationKind::Demotion, "nodes", 20_000), 1.0, "other evidence");
        assert_eq!(f.eagerness(MitigationKind::ShedLeaders, "latency", 20_000), 1.0, "other kind");
        f.push(record(3, MitigationKind::Demotion, Some(true)), 10);
        assert_eq!(f.eagerness(MitigationKind::Demotion, "latency", 20_000), 0.5, "a helpful one counts back");
        for id in 4..=10 {
            f.push(record(id, MitigationKind::Demotion, Some(false)), 10);
        }
        assert_eq!(f.eagerness(MitigationKind::Demotion, "latency", 20_000), 0.125, "at most three halvings");
        assert_eq!(f.eagerness(MitigationKind::Demotion, "latency", 20_000 + MEMORY_MS), 1.0, "a lesson fades");
        assert_eq!(f.push(record(11, MitigationKind::Demotion, None), 10), Some(1), "bounded");
        assert!(f.open(MitigationKind::Demotion, 2));
        assert_eq!(f.due(11_000, 0), vec![11]);
        assert!(f.due(11_000, 1_000).is_empty());
        let (g, dropped) = Feedback::recover(f.records().cloned().collect(), 4);
        assert_eq!((g.records().count(), dropped.len()), (4, 6));
        assert_eq!(g.records().next().map(|r| r.id), Some(8), "the newest kept");
    }
}
