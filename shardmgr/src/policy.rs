//! The shard manager's policies (design.md §4): each looks at the manager's state and plans
//! operators; none does I/O or reads a clock. In priority order each round:
//!
//! 0. **Resolve** a merge left unfinished (a frozen source with no operator): finish or
//!    unfreeze it.
//! 1. **Migrate** (design.md §6, the manager's `migrate` part): move leaderships off a node being
//!    evacuated a few per round; while preparing, fill and verify learner copies of its
//!    group's shards on the target, hottest first. A *degraded* node (its disk or links under an
//!    early warning) sheds its leaderships at once (`shed-leader-moves-per-round`), being
//!    evacuated or not, and is given none until the warning clears: its replicas stay, only
//!    the request path leaves its disk.
//! 2. **Repair**: a shard's replicas must be exactly its group's members - one replica at a
//!    time, hottest shards first, at most `max-copies-per-node` copies to or from a node at
//!    once: a new replica is added as a learner, verified against the leader (range checksum
//!    at one log index), then promoted, or swapped in for the replica it replaces in one
//!    joint-consensus change; the replaced one is then removed. This is how a shard moves
//!    between groups, how new nodes receive their first replicas and how a migration cuts
//!    over (a prepared, verified learner is verified again and swapped in). Then, unless the
//!    scheduler is paused, **demote** (`crate::shift`): a node leading ranges whose risk from their leader reaches
//!    `range-risk-shift` hands them to safer voters gradually over `shift-period-ms`, and is
//!    given no leadership meanwhile.
//! 3. **Prepare known spikes** (`crate::events`): split the range at its bounds and in halves
//!    until it spans the shards asked for, then spread its leaderships; its shards are not
//!    merged until the spike ends. Then **split** by size or keys (at the leader's middle key), or by load after the shard
//!    stayed hot for the load-split window (at the sampled key that best halves the load).
//! 4. **Merge** adjacent shards of one group, both small and cold for `merge-delay-ms`,
//!    their combined load under half the split thresholds, neither split within
//!    `split-merge-interval-ms`.
//! 5. **Leader balance** inside each group by load score (by count when the load is
//!    even, or when no single move evens it),
//!    acting only past `balance-tolerance` above the mean *and* a minimum absolute gap; with
//!    `forecast-balance` the score is the larger of the smoothed load and its forecast peak
//!    (`crate::forecast`), and a moved leadership stays for `leader-move-hold-ms`. With it
//!    too, a shard forecast to pass the load-split threshold within the horizon is split
//!    before it does (policy 3), and one forecast hot is not merged (policy 4).
//! 6. **Group balance**: re-place one shard from the largest group (by size, then load) to
//!    the smallest, with the same hysteresis; repair then moves its replicas.
//!
//! Balancing plans count against `max-balance-moves-per-minute`; every plan against
//! `max-running-operators`. A manager that just started balances nothing for
//! `BALANCE_AFTER_START_HEARTBEATS` heartbeat intervals (until every node reported to it).

use std::collections::{BTreeMap, HashSet};

use crate::events::SpikeRange;
use crate::load::{choose_split_key, KeySpan};
use crate::model::{GroupId, NodeId, NodeState, Role, ShardId, ShardMeta};
use crate::operator::{OperatorKind, Step};
use crate::state::ClusterState;

/// Heartbeat intervals a new manager waits before it balances leaders or groups.
pub(crate) const BALANCE_AFTER_START_HEARTBEATS: u64 = 3;

/// An operator to start.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    pub(crate) shard: ShardId,
    pub(crate) kind: OperatorKind,
    pub(crate) steps: Vec<Step>,
    pub(crate) rollback: Vec<Step>,
    /// Counts against the balancing budget.
    pub(crate) counts_as_balance: bool,
    /// Re-place the shard into this group (before any steps).
    pub(crate) new_group: Option<GroupId>,
}

/// Every plan of this round, in priority order (module docs).
pub(crate) fn plan(m: &ClusterState, now_ms: u64) -> Vec<Plan> {
    let mut out = Vec::new();
    let mut claimed = HashSet::new();
    resolve_frozen(m, &mut out, &mut claimed);
    let mut copies = copies_in_flight(m);
    migrate(m, &mut out, &mut claimed, &mut copies);
    shed_leaders(m, &mut out, &mut claimed);
    repair(m, &mut out, &mut claimed, &mut copies);
    // Paused by an operator (during an incident, say): no load-driven moves and no demotions;
    // what keeps the data safe above (frozen merges resolved, evacuations, failing disks
    // shed, lost replicas repaired) goes on.
    if m.cluster().scheduler_paused {
        return out;
    }
    demote(m, now_ms, &mut out, &mut claimed);
    prepare_spikes(m, now_ms, &mut out, &mut claimed);
    splits(m, now_ms, &mut out, &mut claimed);
    merges(m, now_ms, &mut out, &mut claimed);
    // A manager that just took over balances only once every node has reported to it (its
    // leaders, loads and failure-analysis inputs are fresh): balancing on what its
    // predecessor last persisted could hand a leadership back to a node being shed.
    if now_ms >= m.started_ms() + BALANCE_AFTER_START_HEARTBEATS * m.cfg().heartbeat_interval_ms {
        let score = |shard| balance_score(m, shard, now_ms, m.cfg().forecast_balance);
        leader_balance(m, now_ms, &score, &mut out, &mut claimed);
        group_balance(m, &mut out, &claimed);
    }
    out
}

fn free<'a>(m: &'a ClusterState, claimed: &'a HashSet<ShardId>) -> impl Iterator<Item = &'a ShardMeta> + 'a {
    m.directory().iter().filter(move |s| m.is_free(s) && !claimed.contains(&s.id))
}

/// May `id` receive a replica or a leadership? (`Up`, and not being evacuated.)
fn node_up(m: &ClusterState, id: NodeId) -> bool {
    m.node(id).is_some_and(|n| n.state.accepts_load()) && !m.is_held(id)
}

/// Copies (operators that add a replica and fill it) running to or from each node.
fn copies_in_flight(m: &ClusterState) -> BTreeMap<NodeId, usize> {
    let mut out = BTreeMap::new();
    for op in m.operators().filter(|op| !op.status.is_finished()) {
        let (from, to) = match op.kind {
            OperatorKind::PrepareCopy { from, to } => (Some(from), Some(to)),
            // Copying, verifying (a full scan on both ends) or swapping.
            OperatorKind::MoveReplica { from, to }
                if op.steps.iter().any(|s| {
                    matches!(s, Step::AddLearner { .. } | Step::VerifyReplica { .. } | Step::SwapReplica { .. })
                }) =>
            {
                (from, to)
            }
            _ => continue,
        };
        for n in from.into_iter().chain(to) {
            *out.entry(n).or_insert(0) += 1;
        }
    }
    out
}

/// Counts a copy between `from` and `to` against `max-copies-per-node`; false (and no
/// count) if either node is at its limit.
fn take_copy(m: &ClusterState, copies: &mut BTreeMap<NodeId, usize>, from: Option<NodeId>, to: NodeId) -> bool {
    let limit = m.cfg().max_copies_per_node;
    let nodes: Vec<NodeId> = from.into_iter().chain([to]).collect();
    if nodes.iter().any(|n| copies.get(n).copied().unwrap_or(0) >= limit) {
        return false;
    }
    for n in nodes {
        *copies.entry(n).or_insert(0) += 1;
    }
    true
}

/// Shards by load score, hottest first (ties by id).
fn hottest_first<'a>(m: &ClusterState, shards: impl Iterator<Item = &'a ShardMeta>) -> Vec<&'a ShardMeta> {
    let score = |s: &ShardMeta| m.soft(s.id).map_or(0.0, |x| x.load.score());
    let mut v: Vec<&ShardMeta> = shards.collect();
    v.sort_by(|a, b| score(b).total_cmp(&score(a)).then(a.id.cmp(&b.id)));
    v
}

/// Policy 1: for each node being evacuated, move its leaderships away a few per round (the
/// meta shard's last: it carries the manager), and while preparing, fill learner copies on
/// the target, hottest first, of shards the node no longer leads (a copy is sent by the
/// leader, and the node's disk is the one failing).
fn migrate(
    m: &ClusterState,
    out: &mut Vec<Plan>,
    claimed: &mut HashSet<ShardId>,
    copies: &mut BTreeMap<NodeId, usize>,
) {
    use crate::model::MigrationStage;
    for mig in m.migrations() {
        if !matches!(mig.stage, MigrationStage::Preparing | MigrationStage::CuttingOver) {
            continue;
        }
        let from = mig.node;
        let per_round = if m.sheds_leaders(from) {
            m.cfg().shed_leader_moves_per_round
        } else {
            m.cfg().migration_leader_moves_per_round
        };
        let shifting = shift_leaders(m, from, per_round, out, claimed);
        // Leaderships first: then every shard's copy is sent by a healthy leader, and the
        // hottest shard's goes first.
        if shifting {
            continue;
        }
        let (MigrationStage::Preparing, Some(to)) = (mig.stage, mig.target) else { continue };
        let in_group = |s: &&ShardMeta| m.placement(s.id).is_some_and(|p| p.group == mig.group);
        let candidates = hottest_first(
            m,
            free(m, claimed)
                .filter(in_group)
                .filter(|s| s.replica(from).is_some() && s.replica(to).is_none() && s.leader != Some(from)),
        );
        let mut planned = Vec::new();
        for s in candidates {
            if !take_copy(m, copies, Some(from), to) {
                break;
            }
            planned.push(Plan {
                shard: s.id,
                kind: OperatorKind::PrepareCopy { from, to },
                steps: vec![Step::AddLearner { node: to }, Step::VerifyReplica { node: to }],
                rollback: vec![Step::RemoveReplica { node: to }],
                counts_as_balance: false,
                new_group: None,
            });
        }
        for p in planned {
            claimed.insert(p.shard);
            out.push(p);
        }
    }
}

/// Plans moves of `from`'s leaderships, hottest first and the meta shard's last (it carries
/// the manager), each to the healthy voter leading the least load, so that at most
/// `moves_per_round` run at once; true while any is planned or running.
fn shift_leaders(
    m: &ClusterState,
    from: NodeId,
    moves_per_round: usize,
    out: &mut Vec<Plan>,
    claimed: &mut HashSet<ShardId>,
) -> bool {
    let running =
        m.operators().filter(|op| !op.status.is_finished() && op.kind == OperatorKind::ShiftLeader { from }).count();
    let mut budget = moves_per_round.saturating_sub(running);
    let mut led: Vec<&ShardMeta> = hottest_first(m, free(m, claimed).filter(|s| s.leader == Some(from)));
    led.sort_by_key(|s| ClusterState::is_meta(s)); // stable: the meta shard last
    let mut planned = Vec::new();
    if led.is_empty() || budget == 0 {
        return running > 0;
    }
    // Each node's led load, once (not once per candidate: a region's window sheds hundreds
    // of nodes in one round).
    let scores = leader_scores(m);
    let score = |n: &NodeId| scores.get(n).copied().unwrap_or(0.0);
    for s in led {
        if budget == 0 {
            break;
        }
        let to = s
            .voters()
            .into_iter()
            .filter(|n| *n != from && may_lead(m, *n))
            .min_by(|a, b| score(a).total_cmp(&score(b)).then(a.cmp(b)));
        let Some(to) = to else { continue };
        budget -= 1;
        planned.push(Plan {
            shard: s.id,
            kind: OperatorKind::ShiftLeader { from },
            steps: vec![Step::TransferLeader { to }],
            rollback: vec![],
            counts_as_balance: false,
            new_group: None,
        });
    }
    let shifting = running + planned.len() > 0;
    for p in planned {
        claimed.insert(p.shard);
        out.push(p);
    }
    shifting
}

/// Policy 1b: a degraded node ([`crate::RiskInputs::degraded`]), or one in a maintenance
/// window that is near or open ([`crate::events`]), not being evacuated sheds its
/// leaderships (`shed-leader-moves-per-round` at once): its slow disk is on every request's
/// path only where it leads, and a node about to stop must not lead when it does.
fn shed_leaders(m: &ClusterState, out: &mut Vec<Plan>, claimed: &mut HashSet<ShardId>) {
    use crate::model::MigrationStage;
    let shedding: std::collections::BTreeSet<NodeId> = m.degraded().union(m.maintenance()).copied().collect();
    for node in shedding {
        let evacuating = m.migrations().any(|mig| {
            mig.node == node && matches!(mig.stage, MigrationStage::Preparing | MigrationStage::CuttingOver)
        });
        if !m.sheds_leaders(node) || evacuating || !m.node(node).is_some_and(|n| n.state.accepts_load()) {
            continue;
        }
        // Slower after sheds that did not help (`crate::feedback`).
        let per_round = (m.cfg().shed_leader_moves_per_round as f64 * m.eagerness().shed).ceil() as usize;
        shift_leaders(m, node, per_round.max(1), out, claimed);
    }
}

/// May `node` be given a leadership? Up, not being evacuated, not degraded, not demoted.
pub(crate) fn may_lead(m: &ClusterState, node: NodeId) -> bool {
    node_up(m, node) && !m.sheds_leaders(node) && !m.is_demoted(node)
}

/// Policy 2, then: the gradual shift (`crate::shift`): each demoted node's riskiest ranges move
/// to their safest voters, as many as the shift's weight allows so far.
fn demote(m: &ClusterState, now_ms: u64, out: &mut Vec<Plan>, claimed: &mut HashSet<ShardId>) {
    let period = m.cfg().shift_period_ms;
    for shift in m.shifts().filter(|s| s.finished_ms.is_none()) {
        let mut budget = shift.budget(now_ms, period);
        for &(shard, to) in m.demotable(shift.node) {
            if budget == 0 {
                break;
            }
            let Some(s) = m.directory().get(shard) else { continue };
            if claimed.contains(&shard) || !m.is_free(s) || s.leader != Some(shift.node) {
                continue;
            }
            budget -= 1;
            claimed.insert(shard);
            out.push(Plan {
                shard,
                kind: OperatorKind::DemoteLeader { from: shift.node },
                steps: vec![Step::TransferLeader { to }],
                rollback: vec![],
                counts_as_balance: false,
                new_group: None,
            });
        }
    }
}

/// The load score of the shards each node leads.
fn leader_scores(m: &ClusterState) -> BTreeMap<NodeId, f64> {
    let mut out = BTreeMap::new();
    for s in m.directory().iter() {
        if let Some(l) = s.leader {
            *out.entry(l).or_insert(0.0) += m.soft(s.id).map_or(0.0, |x| x.load.score());
        }
    }
    out
}

/// Policy 0: a shard left frozen for a merge with no operator on it (its operator failed or
/// was lost) gets one that settles the merge: finish it or unfreeze the source.
fn resolve_frozen(m: &ClusterState, out: &mut Vec<Plan>, claimed: &mut HashSet<ShardId>) {
    for s in m.directory().iter() {
        let Some(target) = s.merging_into else { continue };
        if m.is_busy(s.id) || m.is_busy(target) || s.leader.is_none() {
            continue;
        }
        claimed.insert(s.id);
        claimed.insert(target);
        out.push(Plan {
            shard: s.id,
            kind: OperatorKind::Merge,
            steps: vec![Step::ResolveMerge { target }],
            rollback: vec![],
            counts_as_balance: false,
            new_group: None,
        });
    }
}

/// Policy 2: one replica change per shard toward its group's members, hottest shards first.
fn repair(m: &ClusterState, out: &mut Vec<Plan>, claimed: &mut HashSet<ShardId>, copies: &mut BTreeMap<NodeId, usize>) {
    let taken = claimed.clone();
    let shards = hottest_first(m, free(m, &taken));
    for s in shards {
        let Some(gid) = m.group_of(s.id) else { continue };
        let Some(group) = m.group(gid) else { continue };
        let learner = s.replicas.iter().find(|r| r.role == Role::Learner && group.nodes.contains(&r.node));
        let missing: Vec<NodeId> =
            group.nodes.iter().copied().filter(|n| s.replica(*n).is_none() && node_up(m, *n)).collect();
        // A prepared copy for a migration from this group is not an extra replica.
        let extra: Vec<NodeId> = s
            .replicas
            .iter()
            .map(|r| r.node)
            .filter(|n| !group.nodes.contains(n) && !m.is_prepare_target(gid, *n))
            .collect();
        // The replica a new one replaces: an extra voter in the same region, else any extra
        // voter (a learner extra is simply removed).
        let replaced = |to: NodeId| {
            let region = m.node(to).map(|n| n.region.as_str());
            let voter = |n: &&NodeId| s.replica(**n).is_some_and(|r| r.role == Role::Voter);
            let same = extra.iter().filter(voter).find(|e| m.node(**e).map(|n| n.region.as_str()) == region);
            same.or(extra.iter().find(voter)).copied()
        };
        let (steps, rollback, from, to) = if let Some(l) = learner.filter(|l| node_up(m, l.node)) {
            // Filled already (a prepared copy, or an interrupted repair): verify, then swap.
            let to = l.node;
            let from = replaced(to);
            if !take_copy(m, copies, from, to) {
                continue;
            }
            let (steps, rollback) = swap_in(from, to, false);
            (steps, rollback, from, Some(to))
        } else if let Some(&to) = missing.first() {
            let from = replaced(to);
            if !take_copy(m, copies, from, to) {
                continue;
            }
            let (steps, rollback) = swap_in(from, to, true);
            (steps, rollback, from, Some(to))
        } else if let Some(&from) = extra.first() {
            let voter = s.replica(from).is_some_and(|r| r.role == Role::Voter);
            // Never below the group's replicas: an extra voter goes only once every member
            // holds one (a member being evacuated or down may lack it).
            if voter && (s.voters().len() <= 1 || group.nodes.iter().any(|n| s.replica(*n).is_none())) {
                continue;
            }
            (vec![Step::RemoveReplica { node: from }], vec![], Some(from), None)
        } else {
            continue;
        };
        claimed.insert(s.id);
        out.push(Plan {
            shard: s.id,
            kind: OperatorKind::MoveReplica { from, to },
            steps,
            rollback,
            counts_as_balance: false,
            new_group: None,
        });
    }
}

/// The steps that bring a replica on `to` in (adding it as a learner first when `add`),
/// verified, in place of the voter on `from` if any, and the steps that undo them: the
/// original voter is a voter again and the new replica is gone.
fn swap_in(from: Option<NodeId>, to: NodeId, add: bool) -> (Vec<Step>, Vec<Step>) {
    let mut steps = Vec::new();
    if add {
        steps.push(Step::AddLearner { node: to });
    }
    steps.push(Step::VerifyReplica { node: to });
    let mut rollback = Vec::new();
    match from {
        Some(from) => {
            steps.push(Step::SwapReplica { promote: to, demote: from });
            steps.push(Step::RemoveReplica { node: from });
            rollback.push(Step::SwapReplica { promote: from, demote: to });
        }
        None => steps.push(Step::PromoteLearner { node: to }),
    }
    rollback.push(Step::RemoveReplica { node: to });
    (steps, rollback)
}

/// Policy 3: split by size or keys, or by sustained load.
fn splits(m: &ClusterState, now_ms: u64, out: &mut Vec<Plan>, claimed: &mut HashSet<ShardId>) {
    let cfg = m.cfg();
    let mut planned = Vec::new();
    for s in free(m, claimed) {
        if ClusterState::is_meta(s) {
            continue;
        }
        let Some(soft) = m.soft(s.id) else { continue };
        let split = |kind, key| Plan {
            shard: s.id,
            kind,
            steps: vec![Step::Split { key, new_shard: 0, epoch: s.epoch }],
            rollback: vec![],
            counts_as_balance: false,
            new_group: None,
        };
        if soft.size_bytes > cfg.split_max_size_bytes || soft.keys > cfg.split_max_keys {
            planned.push(split(OperatorKind::SizeSplit, None));
            continue;
        }
        if cfg.forecast_balance && soft.hot_since_ms.is_none() && forecast_hot(m, s.id, now_ms) {
            // Forecast to pass the threshold within the horizon: split now, at the key that
            // best halves the load sampled lately (the leader's middle key without samples,
            // if the shard has keys to halve).
            let key = load_split_key(m, s);
            if key.is_some() || soft.keys >= 2 {
                planned.push(split(OperatorKind::ForecastSplit, key));
                continue;
            }
        }
        let Some(hot_since) = soft.hot_since_ms else { continue };
        if now_ms.saturating_sub(hot_since) < cfg.load_split_window_ms {
            continue;
        }
        if let Some(key) = load_split_key(m, s) {
            planned.push(split(OperatorKind::LoadSplit, Some(key)));
        }
    }
    for p in planned {
        claimed.insert(p.shard);
        out.push(p);
    }
}

/// The sampled key that best halves `s`'s recent load, if the samples allow one.
fn load_split_key(m: &ClusterState, s: &ShardMeta) -> Option<Vec<u8>> {
    let cfg = m.cfg();
    let soft = m.soft(s.id)?;
    let samples: Vec<&KeySpan> = soft.samples.iter().flat_map(|(_, v)| v.iter()).collect();
    let chosen = choose_split_key(
        &s.start,
        s.end.as_deref(),
        &samples,
        cfg.load_split_candidates,
        cfg.load_split_max_balance,
        cfg.load_split_max_contained,
    );
    chosen.map(|(key, _)| key)
}

/// Is `shard` forecast (from enough history) to pass the load-split threshold within the
/// horizon while it is under it now?
pub(crate) fn forecast_hot(m: &ClusterState, shard: ShardId, now_ms: u64) -> bool {
    let f = m.forecast(shard, now_ms);
    let threshold = m.cfg().load_split_qps;
    // Less eager after splits whose forecast load did not come (`crate::feedback`).
    let needed = threshold / m.eagerness().presplit;
    f.points >= crate::forecast::MIN_POINTS && f.now < threshold && f.peak >= needed
}

/// Is `shard` forecast to carry half the load-split threshold within the horizon, or at any
/// time in the next season? Then it is not merged: a merge between two daily peaks would be
/// split again before the next.
pub(crate) fn forecast_kept(m: &ClusterState, shard: ShardId, now_ms: u64) -> bool {
    let half = m.cfg().load_split_qps / 2.0;
    m.forecast(shard, now_ms).peak >= half || m.season_peak(shard) >= half
}

/// The load a leadership carries for balancing: by forecast, the larger of the shard's
/// smoothed load now and its forecast peak (a node forecast to be the hottest sheds before
/// the peak, and a second's noise moves nothing); else the latest report.
fn balance_score(m: &ClusterState, shard: ShardId, now_ms: u64, by_forecast: bool) -> f64 {
    if by_forecast {
        let f = m.forecast(shard, now_ms);
        f.now.max(f.peak)
    } else {
        m.soft(shard).map_or(0.0, |x| x.load.score())
    }
}

/// What the forecasts advise now, whether or not the policies act on them
/// (`forecast-balance`): splits of shards forecast to pass the load-split threshold,
/// leadership moves by forecast load (policy 5's choice with forecast scores), and shards
/// kept split because they are forecast hot.
pub(crate) fn forecast_advice(m: &ClusterState, now_ms: u64) -> (Vec<Plan>, Vec<ShardId>) {
    let mut out = Vec::new();
    let mut claimed = HashSet::new();
    for s in m.directory().iter().filter(|s| !ClusterState::is_meta(s)) {
        if forecast_hot(m, s.id, now_ms) {
            claimed.insert(s.id);
            out.push(Plan {
                shard: s.id,
                kind: OperatorKind::ForecastSplit,
                steps: vec![Step::Split { key: load_split_key(m, s), new_shard: 0, epoch: s.epoch }],
                rollback: vec![],
                counts_as_balance: false,
                new_group: None,
            });
        }
    }
    let score = |shard| balance_score(m, shard, now_ms, true);
    leader_balance(m, now_ms, &score, &mut out, &mut claimed);
    let kept = m
        .directory()
        .iter()
        .filter(|s| !ClusterState::is_meta(s) && m.soft(s.id).is_some_and(|x| x.cold_since_ms.is_some()))
        .filter(|s| forecast_kept(m, s.id, now_ms))
        .map(|s| s.id)
        .collect();
    (out, kept)
}

/// Policy 4: merge small, cold neighbours of one group (the right one into the left one).
fn merges(m: &ClusterState, now_ms: u64, out: &mut Vec<Plan>, claimed: &mut HashSet<ShardId>) {
    let cfg = m.cfg();
    let spikes = active_spikes(m, now_ms);
    let mergeable = |s: &ShardMeta, claimed: &HashSet<ShardId>| -> bool {
        if ClusterState::is_meta(s) || !m.is_free(s) || claimed.contains(&s.id) || s.has_learners() {
            return false;
        }
        // A range split for a known spike stays split until the spike ends, and one
        // forecast to be hot within the horizon stays split too.
        if spikes.iter().any(|(r, _)| overlaps(s, r.start, r.end)) {
            return false;
        }
        if cfg.forecast_balance && forecast_kept(m, s.id, now_ms) {
            return false;
        }
        let Some(soft) = m.soft(s.id) else { return false };
        let cold = soft.cold_since_ms.is_some_and(|t| now_ms.saturating_sub(t) >= cfg.merge_delay_ms);
        let split_long_ago = m
            .placement(s.id)
            .and_then(|p| p.split_at_ms)
            .is_none_or(|t| now_ms.saturating_sub(t) >= cfg.split_merge_interval_ms);
        cold && split_long_ago
    };
    let shards: Vec<&ShardMeta> = m.directory().iter().collect();
    for pair in shards.windows(2) {
        let (l, r) = (pair[0], pair[1]);
        if !l.is_left_neighbour_of(r) || !mergeable(l, claimed) || !mergeable(r, claimed) {
            continue;
        }
        if m.group_of(l.id) != m.group_of(r.id) || l.voters() != r.voters() {
            continue;
        }
        let (Some(a), Some(b)) = (m.soft(l.id), m.soft(r.id)) else { continue };
        // Pieces of a range split for its forecast load are each cooler than the whole: the
        // merged shard's forecast is what must stay cold.
        if cfg.forecast_balance {
            let ahead = m.forecast(l.id, now_ms).peak + m.forecast(r.id, now_ms).peak;
            let later = m.season_peak(l.id) + m.season_peak(r.id);
            if ahead.max(later) >= cfg.load_split_qps / 2.0 {
                continue;
            }
        }
        let combined_cold = a.load.qps() + b.load.qps() < cfg.load_split_qps / 2.0
            && a.load.bytes_per_sec() + b.load.bytes_per_sec() < cfg.load_split_bytes_per_sec / 2.0;
        let combined_small =
            a.size_bytes + b.size_bytes < cfg.split_max_size_bytes && a.keys + b.keys < cfg.split_max_keys;
        if !(combined_cold && combined_small) {
            continue;
        }
        claimed.insert(l.id);
        claimed.insert(r.id);
        out.push(Plan {
            shard: r.id,
            kind: OperatorKind::Merge,
            steps: vec![Step::Merge { target: l.id }],
            rollback: vec![Step::ResolveMerge { target: l.id }],
            counts_as_balance: false,
            new_group: None,
        });
    }
}

/// The known spikes preparing or open at `now_ms`, with their event ids.
fn active_spikes(m: &ClusterState, now_ms: u64) -> Vec<(SpikeRange<'_>, u64)> {
    m.events().filter(|e| e.phase(now_ms).is_active()).filter_map(|e| e.spike_range().map(|r| (r, e.id))).collect()
}

/// Does `s` hold any key of `[start, end)`?
fn overlaps(s: &ShardMeta, start: &[u8], end: Option<&[u8]>) -> bool {
    let starts_before_end = end.is_none_or(|e| s.start.as_slice() < e);
    let ends_after_start = s.end.as_deref().is_none_or(|e| e > start);
    starts_before_end && ends_after_start
}

/// Policy 3a: get each known spike's range ready before it begins ([`crate::events`]), one
/// operator per spike per round: split at the range's bounds, then halve its largest shard
/// (at the leader's middle key) until the range spans the shards asked for, then spread the
/// range's leaderships over the group's voters (no voter leading two more than another).
fn prepare_spikes(m: &ClusterState, now_ms: u64, out: &mut Vec<Plan>, claimed: &mut HashSet<ShardId>) {
    for (SpikeRange { start, end, shards: wanted }, event) in active_spikes(m, now_ms) {
        let kind = OperatorKind::EventPrepare { event };
        let plan = |s: &ShardMeta, step: Step| Plan {
            shard: s.id,
            kind: kind.clone(),
            steps: vec![step],
            rollback: vec![],
            counts_as_balance: false,
            new_group: None,
        };
        let inside: Vec<&ShardMeta> =
            m.directory().iter().filter(|s| overlaps(s, start, end) && !ClusterState::is_meta(s)).collect();
        let cuts_at = |s: &ShardMeta, key: &[u8]| s.start.as_slice() < key && s.contains(key);
        let bound = inside.iter().find_map(|s| {
            let key = [Some(start), end].into_iter().flatten().find(|k| cuts_at(s, k))?;
            Some((*s, key.to_vec()))
        });
        let chosen = if let Some((s, key)) = bound {
            Some(plan(s, Step::Split { key: Some(key), new_shard: 0, epoch: s.epoch }))
        } else if inside.len() < wanted as usize {
            let largest = inside
                .iter()
                .filter(|s| m.soft(s.id).is_some_and(|x| x.keys >= 2))
                .max_by_key(|s| (m.soft(s.id).map_or(0, |x| x.size_bytes), std::cmp::Reverse(s.id)));
            largest.map(|s| plan(s, Step::Split { key: None, new_shard: 0, epoch: s.epoch }))
        } else {
            spread_leaders(m, &inside).map(|(s, to)| plan(s, Step::TransferLeader { to }))
        };
        if let Some(p) = chosen.filter(|p| m.directory().get(p.shard).is_some_and(|s| m.is_free(s))) {
            if claimed.insert(p.shard) {
                out.push(p);
            }
        }
    }
}

/// A leadership to move so that `shards`' leaders spread over their voters: from the voter
/// leading the most of them to the one leading the fewest, when they differ by two or more.
fn spread_leaders<'a>(m: &ClusterState, shards: &[&'a ShardMeta]) -> Option<(&'a ShardMeta, NodeId)> {
    let mut led: BTreeMap<NodeId, Vec<&ShardMeta>> = BTreeMap::new();
    for s in shards {
        for v in s.voters().into_iter().filter(|v| may_lead(m, *v)) {
            led.entry(v).or_default();
        }
        if let Some(l) = s.leader {
            led.entry(l).or_default().push(s);
        }
    }
    let (most, theirs) = led.iter().max_by_key(|(n, v)| (v.len(), std::cmp::Reverse(**n)))?;
    let (fewest, mine) = led.iter().filter(|(n, _)| may_lead(m, **n)).min_by_key(|(n, v)| (v.len(), **n))?;
    if theirs.len() < mine.len() + 2 {
        return None;
    }
    let s = theirs.iter().find(|s| s.replica(*fewest).is_some_and(|r| r.role == Role::Voter))?;
    debug_assert_ne!(most, fewest);
    Some((*s, *fewest))
}

/// Per-node leader load inside one group.
#[derive(Default)]
struct NodeLeaders {
    score: f64,
    /// Every leadership it holds (the count balanced).
    count: usize,
    /// Those that may move now (free, not held).
    shards: Vec<(f64, ShardId)>,
}

/// Policy 5: even out leader load inside each group (one transfer per group per round), by
/// [`balance_score`]; a leadership this policy moved within `leader-move-hold-ms` stays.
pub(crate) fn leader_balance(
    m: &ClusterState,
    now_ms: u64,
    score: &dyn Fn(ShardId) -> f64,
    out: &mut Vec<Plan>,
    claimed: &mut HashSet<ShardId>,
) {
    let cfg = m.cfg();
    let held =
        |shard: ShardId| m.balance_moved_ms(shard).is_some_and(|t| now_ms.saturating_sub(t) < cfg.leader_move_hold_ms);
    let mut by_group: BTreeMap<GroupId, BTreeMap<NodeId, NodeLeaders>> = BTreeMap::new();
    for g in m.groups() {
        let nodes = g.nodes.iter().filter(|n| may_lead(m, **n)).map(|n| (*n, NodeLeaders::default())).collect();
        by_group.insert(g.id, nodes);
    }
    for s in m.directory().iter() {
        // The meta shard's leadership carries the shard manager: it moves only when its node
        // fails (or by hand), never to even out counts.
        if ClusterState::is_meta(s) {
            continue;
        }
        let (Some(leader), Some(p)) = (s.leader, m.placement(s.id)) else { continue };
        let Some(entry) = by_group.get_mut(&p.group).and_then(|g| g.get_mut(&leader)) else { continue };
        let score = score(s.id);
        entry.score += score;
        entry.count += 1;
        if m.is_free(s) && !claimed.contains(&s.id) && !held(s.id) {
            entry.shards.push((score, s.id));
        }
    }
    for nodes in by_group.values() {
        if nodes.len() < 2 {
            continue;
        }
        let n = nodes.len() as f64;
        let mean = nodes.values().map(|x| x.score).sum::<f64>() / n;
        let by_score = |a: &&NodeId, b: &&NodeId| nodes[a].score.total_cmp(&nodes[b].score).then(b.cmp(a));
        let (Some(hot), Some(cold)) = (nodes.keys().max_by(by_score), nodes.keys().min_by(by_score)) else { continue };
        let (hs, cs) = (nodes[hot].score, nodes[cold].score);
        let pick = if hs > mean * (1.0 + cfg.balance_tolerance) && hs - mean > cfg.balance_min_leader_load_gap {
            // The shard whose load best halves the gap, among those whose move lowers the
            // hottest node's load by at least the minimum gap: the receiver must end up that
            // far below where the sender was, or a hot shard would just bounce between
            // nodes (its receiver becoming the new hottest by a hair).
            let gap = hs - cs;
            let max_score = gap - cfg.balance_min_leader_load_gap;
            nodes[hot]
                .shards
                .iter()
                .filter(|(score, id)| *score <= max_score && has_voter(m, *id, *cold))
                .min_by(|a, b| (a.0 - gap / 2.0).abs().total_cmp(&(b.0 - gap / 2.0).abs()).then(a.1.cmp(&b.1)))
                .map(|(_, id)| (*id, *cold))
        } else {
            None
        };
        // Otherwise even out the count, moving the least loaded leaderships: when the load
        // is even, or uneven in a way no single move fixes (one hot shard) - then never onto
        // the hottest node.
        let load_even = hs - mean <= cfg.balance_min_leader_load_gap;
        let pick = pick.or_else(|| {
            let count = |id: &NodeId| nodes[id].count;
            let mean_count = nodes.keys().map(count).sum::<usize>() as f64 / n;
            let most = nodes.keys().max_by_key(|id| (count(id), std::cmp::Reverse(**id)));
            let least = nodes.keys().filter(|id| load_even || *id != hot).min_by_key(|id| (count(id), **id));
            match (most, least) {
                (Some(a), Some(b))
                    if count(a) >= count(b) + 2 && count(a) as f64 > mean_count * (1.0 + cfg.balance_tolerance) =>
                {
                    nodes[a]
                        .shards
                        .iter()
                        .filter(|(_, id)| has_voter(m, *id, *b))
                        .min_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)))
                        .map(|(_, id)| (*id, *b))
                }
                _ => None,
            }
        });
        if let Some((shard, to)) = pick {
            claimed.insert(shard);
            out.push(Plan {
                shard,
                kind: OperatorKind::BalanceLeader,
                steps: vec![Step::TransferLeader { to }],
                rollback: vec![],
                counts_as_balance: true,
                new_group: None,
            });
        }
    }
}

/// `node` may lead ([`may_lead`]) and holds a voter of `shard` (a Draining node is given no
/// leaderships).
fn has_voter(m: &ClusterState, shard: ShardId, node: NodeId) -> bool {
    may_lead(m, node) && m.directory().get(shard).and_then(|s| s.replica(node)).is_some_and(|r| r.role == Role::Voter)
}

/// A quantity group balance evens out: the group's total, a shard's part, the minimum gap.
type Dimension = (fn(&GroupLoad) -> f64, fn(&(u64, f64, ShardId)) -> f64, f64);

/// Per-group totals for group balance.
#[derive(Default, Clone, Copy)]
struct GroupLoad {
    size_bytes: u64,
    score: f64,
}

/// Policy 6: re-place one shard from the largest group to the smallest (by size, then by
/// load), among complete groups whose members are all up.
fn group_balance(m: &ClusterState, out: &mut Vec<Plan>, claimed: &HashSet<ShardId>) {
    let cfg = m.cfg();
    let rf = m.cluster().replication_factor;
    let mut totals: BTreeMap<GroupId, GroupLoad> = m
        .groups()
        .filter(|g| {
            g.nodes.len() == rf
                && g.nodes.iter().all(|n| m.node(*n).is_some_and(|x| x.state == NodeState::Up) && !m.is_held(*n))
        })
        .map(|g| (g.id, GroupLoad::default()))
        .collect();
    if totals.len() < 2 {
        return;
    }
    let mut candidates: BTreeMap<GroupId, Vec<(u64, f64, ShardId)>> = BTreeMap::new();
    for s in m.directory().iter() {
        let Some(p) = m.placement(s.id) else { continue };
        let Some(t) = totals.get_mut(&p.group) else { continue };
        let (size, score) = m.soft(s.id).map_or((0, 0.0), |x| (x.size_bytes, x.load.score()));
        t.size_bytes += size;
        t.score += score;
        let settled = s.replicas.len() == rf && !s.has_learners();
        if !ClusterState::is_meta(s) && m.is_free(s) && !claimed.contains(&s.id) && settled {
            candidates.entry(p.group).or_default().push((size, score, s.id));
        }
    }
    let n = totals.len() as f64;
    // By size first, then by load.
    let dims: [Dimension; 2] = [
        (|g| g.size_bytes as f64, |c| c.0 as f64, cfg.balance_min_size_gap_bytes as f64),
        (|g| g.score, |c| c.1, cfg.balance_min_leader_load_gap),
    ];
    for (total, of_shard, min_gap) in dims {
        let mean = totals.values().map(total).sum::<f64>() / n;
        let cmp = |a: &(&GroupId, &GroupLoad), b: &(&GroupId, &GroupLoad)| {
            total(a.1).total_cmp(&total(b.1)).then(b.0.cmp(a.0))
        };
        let (Some((&big, bl)), Some((&small, sl))) = (totals.iter().max_by(cmp), totals.iter().min_by(cmp)) else {
            return;
        };
        let (b, s) = (total(bl), total(sl));
        if !(b > mean * (1.0 + cfg.balance_tolerance) && b - mean > min_gap) {
            continue;
        }
        let gap = b - s;
        let pick =
            candidates.get(&big).into_iter().flatten().filter(|c| of_shard(c) > 0.0 && of_shard(c) < gap).min_by(
                |x, y| (of_shard(x) - gap / 2.0).abs().total_cmp(&(of_shard(y) - gap / 2.0).abs()).then(x.2.cmp(&y.2)),
            );
        if let Some(&(_, _, shard)) = pick {
            out.push(Plan {
                shard,
                kind: OperatorKind::MoveReplica { from: None, to: None },
                steps: vec![],
                rollback: vec![],
                counts_as_balance: true,
                new_group: Some(small),
            });
            return;
        }
    }
}
