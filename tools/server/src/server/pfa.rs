//! The failure analysis on the shard manager's node: telemetry from every heartbeat goes into
//! the aggregator; each sample updates the node's warnings and, with a model loaded, its
//! failure probability. Answers `Request::Pfa` (risk, warnings, raw telemetry) and takes the
//! counters operators push.
//!
//! Every node keeps one, but only the manager's is fed (heartbeats go to the manager). What
//! outlives a manager lies in the meta shard (see [`super::pfa_store`]): every node's
//! per-minute history, from which a new manager restores the detectors' baselines (no
//! warm-up after a fail-over); the episodes captured when a node is declared down (its
//! failure, labelled) and now and then from a healthy cluster; the retrained node model.
//!
//! `PfaState`, fed by heartbeats on the manager's node: aggregator, warning board, node and drive
//! models, pushed counters, observed failures, per-node risk; answers `Request::Pfa`; each manager
//! round it yields the records to persist (finished minutes, failure episodes of nodes declared
//! down, a healthy episode now and then). `PfaConfig` is `[server.pfa]`. A new tenure asks each
//! node once for its telemetry backlog and replays it (`replay_backlog`), so the detectors,
//! warnings and risk carry on where the predecessor left them (a disk warning moves the meta
//! leadership, and with it the manager, off the failing node). A heartbeat that raises a disk
//! warning wakes the manager's runtime at once.

use std::collections::{BTreeMap, BTreeSet};

use presage_client::{PfaQuery, ProtoError};
use presage_pfa::aggregate::{Aggregator, AggregatorConfig, MinuteSummary};
use presage_pfa::model::{FailureModel, Table};
use presage_pfa::node_model::Recording;
use presage_pfa::prior::{self, FailurePrior};
use presage_pfa::retrain::{self, RetrainReport};
use presage_pfa::risk::{self, ModelInfo, ModelStatus, NodeRisk, RiskReport};
use presage_pfa::telemetry::{PushedCounters, Signal, TelemetrySample};
use presage_pfa::warning::{WarningAction, WarningBoard, WarningKind, WarningsAnswer};
use presage_shardmgr::{MetaWrite, NodeId, RiskInputs, TelemetryReport};
use serde::{Deserialize, Serialize};

use super::pfa_store::{self, PersistedPfa};

/// Quiet samples after which a warning clears.
pub const WARNING_CLEAR_AFTER_SAMPLES: u32 = 30;
/// Warning events kept for readers.
pub const MAX_WARNING_EVENTS: usize = 10_000;
/// Most warning events or telemetry samples one answer carries.
pub const MAX_ITEMS_PER_ANSWER: u32 = 10_000;
/// Nodes besides the failed ones whose rings an episode holds (their peers' features).
pub const MAX_EPISODE_PEERS: usize = 8;
/// Largest `history-minutes` (a week; each record is about 2.5 KB).
pub const MAX_HISTORY_MINUTES: u64 = 10_080;
/// Largest `max-episode-bytes` (an episode is one Raft entry of the meta shard).
pub const MAX_EPISODE_BYTES: usize = 2 << 20;

/// One manager round's records for the meta shard, and whether a retraining is due.
#[derive(Debug, Default)]
pub struct PfaRound {
    /// To write (after the manager's own records; a failure here does not stop the manager).
    pub writes: Vec<MetaWrite>,
    /// `Some(generation)`: start a retraining for this manager tenure.
    pub retrain: Option<u64>,
}

/// Settings of the failure analysis (`[server.pfa]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct PfaConfig {
    /// A node model file (`presage-ctl pfa train --format telemetry`) to use instead of the
    /// shipped one; empty: the shipped model. A retrained model in the meta shard wins over
    /// both.
    pub node_model_path: String,
    /// A drive model file (`presage-ctl pfa train --format backblaze`); empty: the shipped one.
    pub disk_model_path: String,
    /// Minutes of per-node history kept in the meta shard (a ring of this many records per
    /// node).
    pub history_minutes: u64,
    /// Minutes of history a new shard manager restores the detectors' baselines from.
    pub restore_minutes: u64,
    /// How often the shard manager retrains the node model from the cluster's episodes;
    /// 0: never.
    pub retrain_interval_ms: u64,
    /// Observed failures needed before a retraining is tried.
    pub min_failures_to_retrain: usize,
    /// How often a healthy cluster's telemetry is kept as an episode (negatives); 0: never.
    pub healthy_episode_interval_ms: u64,
    /// Episodes kept in the meta shard (the oldest go first).
    pub max_episodes: usize,
    /// Largest compressed episode; a larger one is not kept.
    pub max_episode_bytes: usize,
}

impl Default for PfaConfig {
    fn default() -> Self {
        PfaConfig {
            node_model_path: String::new(),
            disk_model_path: String::new(),
            history_minutes: 1_440,
            restore_minutes: 60,
            retrain_interval_ms: 6 * 3_600_000,
            min_failures_to_retrain: 3,
            healthy_episode_interval_ms: 3_600_000,
            max_episodes: 64,
            max_episode_bytes: 1 << 20,
        }
    }
}

impl PfaConfig {
    /// Checks every setting.
    pub fn validate(&self) -> Result<(), super::error::InvalidSetting> {
        if self.history_minutes == 0 || self.history_minutes > MAX_HISTORY_MINUTES {
            return Err(super::error::InvalidSetting(format!(
                "pfa.history-minutes ({}) must be in 1..={MAX_HISTORY_MINUTES}",
                self.history_minutes
            )));
        }
        if self.restore_minutes == 0 || self.restore_minutes > self.history_minutes {
            return Err(super::error::InvalidSetting(format!(
                "pfa.restore-minutes ({}) must be in 1..=history-minutes ({})",
                self.restore_minutes, self.history_minutes
            )));
        }
        if self.max_episodes == 0 || self.max_episodes > retrain::MAX_EPISODES {
            return Err(super::error::InvalidSetting(format!(
                "pfa.max-episodes ({}) must be in 1..={}",
                self.max_episodes,
                retrain::MAX_EPISODES
            )));
        }
        if self.max_episode_bytes < 64 << 10 || self.max_episode_bytes > MAX_EPISODE_BYTES {
            return Err(super::error::InvalidSetting(format!(
                "pfa.max-episode-bytes ({}) must be between 64 KiB and {MAX_EPISODE_BYTES}",
                self.max_episode_bytes
            )));
        }
        if self.max_episodes.saturating_mul(self.max_episode_bytes) > pfa_store::MAX_READ_BYTES {
            return Err(super::error::InvalidSetting(format!(
                "pfa.max-episodes x pfa.max-episode-bytes must stay within {} bytes (a retraining reads them all)",
                pfa_store::MAX_READ_BYTES
            )));
        }
        if self.min_failures_to_retrain < 2 {
            return Err(super::error::InvalidSetting(
                "pfa.min-failures-to-retrain must be at least 2 (one is held out to test)".into(),
            ));
        }
        Ok(())
    }
}

/// The manager-side failure analysis.
pub struct PfaState {
    aggregator: Aggregator,
    board: WarningBoard,
    node_model: Option<FailureModel>,
    /// For each of the node model's features, its index in the aggregator's feature vector.
    node_feature_map: Vec<Option<usize>>,
    disk_model: Option<FailureModel>,
    pushed: BTreeMap<NodeId, PushedCounters>,
    risks: BTreeMap<NodeId, NodeRisk>,
    cfg: PfaConfig,
    /// Per node: the start of the last minute written to the history.
    history_through_ms: BTreeMap<NodeId, u64>,
    /// Nodes whose failure episode is kept (until they report again).
    captured: BTreeSet<NodeId>,
    /// The schedule and episode counter, as persisted.
    persisted: PersistedPfa,
    /// Bumped at every manager start: a retraining started under an older tenure is void.
    generation: u64,
    /// Whether a retraining runs.
    retraining: bool,
    /// Removed nodes whose history this tenure deleted.
    purged: BTreeSet<NodeId>,
    last_retrain: Option<RetrainReport>,
    /// Nodes restored from the minute history by this manager.
    restored: BTreeSet<NodeId>,
    /// Nodes whose telemetry backlog this tenure has taken (see [`PfaState::replay_backlog`]).
    backlog_taken: BTreeSet<NodeId>,
    /// Failure-history rates (LANL).
    prior: Option<FailurePrior>,
    /// Per node: the failures observed (declared down), ms since the Unix epoch.
    failures: BTreeMap<NodeId, Vec<u64>>,
}

impl PfaState {
    /// A state with the given models (either may be absent).
    pub fn new(cfg: PfaConfig, node_model: Option<FailureModel>, disk_model: Option<FailureModel>) -> PfaState {
        let node_feature_map =
            node_model.as_ref().map(|m| m.feature_map(&Aggregator::feature_names())).unwrap_or_default();
        PfaState {
            aggregator: Aggregator::new(AggregatorConfig::default()),
            board: WarningBoard::new(WARNING_CLEAR_AFTER_SAMPLES, MAX_WARNING_EVENTS),
            node_model,
            node_feature_map,
            disk_model,
            pushed: BTreeMap::new(),
            risks: BTreeMap::new(),
            cfg,
            history_through_ms: BTreeMap::new(),
            captured: BTreeSet::new(),
            persisted: PersistedPfa::default(),
            generation: 0,
            retraining: false,
            purged: BTreeSet::new(),
            last_retrain: None,
            restored: BTreeSet::new(),
            backlog_taken: BTreeSet::new(),
            prior: match FailurePrior::shipped() {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::error!(error = %e, "the shipped failure-history prior is unreadable; risk goes without it");
                    None
                }
            },
            failures: BTreeMap::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &PfaConfig {
        &self.cfg
    }

    /// The served node model.
    pub fn node_model(&self) -> Option<&FailureModel> {
        self.node_model.as_ref()
    }

    /// Serve `model` as the node model (a retrained one, or the one a predecessor stored).
    pub fn set_node_model(&mut self, model: FailureModel) {
        self.node_feature_map = model.feature_map(&Aggregator::feature_names());
        self.node_model = Some(model);
    }

    /// This node starts running the shard manager: the rings start over (a predecessor's
    /// samples went to it), each node's detectors resume from `history`, the schedule from
    /// `persisted`; nodes already `down` were counted by a predecessor.
    pub fn on_manager_start(
        &mut self,
        history: &[MinuteSummary],
        persisted: Option<PersistedPfa>,
        down: &BTreeSet<NodeId>,
        now_ms: u64,
    ) {
        self.aggregator = Aggregator::new(self.aggregator.config().clone());
        let nodes: BTreeSet<u64> = history.iter().map(|m| m.node).collect();
        self.restored = nodes.into_iter().filter(|n| self.aggregator.restore(*n, history)).collect();
        self.backlog_taken.clear();
        self.history_through_ms.clear();
        self.captured = down.clone();
        self.failures.clear();
        self.purged.clear();
        self.generation += 1;
        self.retraining = false;
        let mut p = persisted.unwrap_or_default();
        if self.cfg.retrain_interval_ms == 0 {
            p.next_retrain_ms = None;
        } else if p.next_retrain_ms.is_none() {
            p.next_retrain_ms = Some(now_ms + self.cfg.retrain_interval_ms);
        }
        p.last_healthy_episode_ms.get_or_insert(now_ms);
        self.persisted = p;
    }

    /// The records to add to the meta shard this round: each node's finished minutes (a
    /// minute is finished when the node's own next sample lies past it); for the nodes newly
    /// `down`, their failures and one episode labelling them all; a healthy episode when one
    /// is due (no node down, no warning active); the deletion of `removed` nodes' history.
    /// Also starts a retraining when one is due.
    pub fn round(&mut self, now_ms: u64, down: &BTreeSet<NodeId>, removed: &BTreeSet<NodeId>) -> PfaRound {
        let mut out = PfaRound::default();
        for (node, _) in self.aggregator.nodes() {
            let Some(last_ms) = self.aggregator.last_sample_ms(node) else { continue };
            let after = self.history_through_ms.get(&node).map_or(0, |m| m + 60_000);
            for m in self.aggregator.minute_summaries(node, after, last_ms) {
                self.history_through_ms.insert(node, m.minute_ms);
                out.writes.push(presage_shardmgr::meta::put(pfa_store::history_key(&m, self.cfg.history_minutes), &m));
            }
        }
        for &node in removed {
            if self.purged.insert(node) {
                self.forget(node);
                out.writes.extend(
                    (0..self.cfg.history_minutes)
                        .map(|slot| MetaWrite { key: pfa_store::history_slot_key(node, slot), value: None }),
                );
            }
        }
        // Failures older than the prior's window no longer count.
        let window_ms = (prior::WINDOW_DAYS * 86_400_000.0) as u64;
        for list in self.failures.values_mut() {
            list.retain(|&t| t.saturating_add(window_ms) >= now_ms);
        }
        self.failures.retain(|_, l| !l.is_empty());
        let mut changed = false;
        let new_down: Vec<NodeId> = down.iter().copied().filter(|n| self.captured.insert(*n)).collect();
        let mut failed = Vec::new();
        for &node in &new_down {
            // The failure counts for the prior even when this manager has no samples of the
            // node; the episode needs them.
            let at_ms = self.aggregator.last_sample_ms(node).unwrap_or(now_ms);
            self.failures.entry(node).or_default().push(at_ms);
            out.writes.push(presage_shardmgr::meta::put(pfa_store::failure_key(node, at_ms), &serde_json::json!({})));
            if self.aggregator.samples(node).next().is_some() {
                failed.push((node, at_ms));
            }
        }
        if !failed.is_empty() {
            // The failed nodes and peers still reporting (not the stale rings of others down).
            let mut nodes: BTreeSet<u64> = failed.iter().map(|(n, _)| *n).collect();
            nodes.extend(
                self.aggregator
                    .nodes()
                    .into_iter()
                    .map(|(n, _)| n)
                    .filter(|n| !down.contains(n))
                    .take(MAX_EPISODE_PEERS),
            );
            let episode = retrain::capture(&self.aggregator, &nodes, &failed);
            changed |= self.push_episode(&mut out.writes, &episode);
        }
        let healthy_due = self.cfg.healthy_episode_interval_ms > 0
            && self
                .persisted
                .last_healthy_episode_ms
                .is_some_and(|t| now_ms >= t + self.cfg.healthy_episode_interval_ms);
        if healthy_due && down.is_empty() && self.board.active().is_empty() {
            self.persisted.last_healthy_episode_ms = Some(now_ms);
            let nodes: BTreeSet<u64> =
                self.aggregator.nodes().into_iter().map(|(n, _)| n).take(MAX_EPISODE_PEERS + 1).collect();
            let episode = retrain::capture(&self.aggregator, &nodes, &[]);
            self.push_episode(&mut out.writes, &episode);
            changed = true;
        }
        let due = self.persisted.next_retrain_ms.is_some_and(|t| now_ms >= t);
        if due && !self.retraining {
            self.retraining = true;
            self.persisted.next_retrain_ms = Some(now_ms + self.cfg.retrain_interval_ms);
            out.retrain = Some(self.generation);
            changed = true;
        }
        if changed {
            out.writes.push(presage_shardmgr::meta::put(pfa_store::state_key(), &self.persisted));
        }
        out
    }

    /// Adds `episode` to the ring of episodes (unless it is too large); whether it was added.
    fn push_episode(&mut self, writes: &mut Vec<MetaWrite>, episode: &Recording) -> bool {
        let (rows, at_ms) = (episode.rows.len(), episode.span_ms().map_or(0, |(_, b)| b));
        match pfa_store::encode_episode(episode, self.cfg.max_episode_bytes) {
            Ok(bytes) => {
                let slot = self.persisted.episode_seq % self.cfg.max_episodes as u64;
                tracing::info!(slot, at_ms, rows, bytes = bytes.len(), "failure-analysis episode kept");
                writes.push(MetaWrite { key: pfa_store::episode_key(slot), value: Some(bytes) });
                self.persisted.episode_seq += 1;
                true
            }
            Err(e) => {
                tracing::warn!(at_ms, rows, error = %e, "failure-analysis episode not kept");
                false
            }
        }
    }

    /// The current manager tenure.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// A retraining of tenure `generation` ended (with its report when it ran).
    pub fn retrain_done(&mut self, generation: u64, report: Option<RetrainReport>) {
        if generation != self.generation {
            return;
        }
        self.retraining = false;
        if report.is_some() {
            self.last_retrain = report;
        }
    }

    /// Take one node's sample (from its heartbeat); true when it raised a warning that
    /// slows the node's disk (the shard manager should act on it without waiting for its
    /// next round).
    pub fn on_telemetry(&mut self, node: NodeId, region: &str, report: TelemetryReport) -> bool {
        let values = report.values.iter().filter_map(|(k, v)| Signal::from_name(k).map(|s| (s, *v))).collect();
        let sample = TelemetrySample { at_ms: report.at_ms, values };
        if !self.aggregator.ingest(node, region, sample) {
            return false;
        }
        self.captured.remove(&node);
        let warned_before = self.disk_warned(node);
        self.board.observe(node, region, report.at_ms, self.aggregator.evidence(node));
        let telemetry_probability = self.node_model.as_ref().and_then(|m| {
            let features = self.aggregator.features(node)?;
            let mut table = Table::new(m.features.len());
            let row = self.node_feature_map.iter().map(|i| i.map_or(f64::NAN, |i| features[i])).collect();
            table.push(row);
            m.predict(&table).first().copied()
        });
        let disk_probability = self.disk_probability(node);
        let (recent_failures, prior_probability) = self.prior_probability(node, report.at_ms);
        let warnings = WarningKind::ALL.into_iter().filter(|k| self.board.is_active(node, *k)).collect();
        self.risks.insert(
            node,
            NodeRisk {
                node,
                region: region.to_string(),
                at_ms: report.at_ms,
                probability: risk::any_fails([telemetry_probability, disk_probability, prior_probability]),
                telemetry_probability,
                disk_probability,
                prior_probability,
                recent_failures,
                warnings,
            },
        );
        !warned_before && self.disk_warned(node)
    }

    /// Is a warning about `node`'s disk active?
    fn disk_warned(&self, node: NodeId) -> bool {
        WarningKind::ALL.into_iter().any(|k| k.slows_leaders() && self.board.is_active(node, k))
    }

    /// Should `node` send its telemetry backlog with its next heartbeat? Until this tenure
    /// took one from it.
    pub fn wants_backlog(&self, node: NodeId) -> bool {
        !self.backlog_taken.contains(&node)
    }

    /// Replays `backlog`, the node's samples before this heartbeat's (oldest first, as its
    /// previous manager received them): the node's detectors, ring, warnings and risk start
    /// over from them, so a manager that just took over judges the node as its predecessor
    /// did instead of warming up again (a risk-driven leader shift moves the manager off the
    /// failing node: losing its detectors then would lose the warning). A backlog shorter
    /// than the warm-up does not replace detectors restored from the minute history. True
    /// when the replay left a disk warning standing.
    pub fn replay_backlog(&mut self, node: NodeId, region: &str, backlog: Vec<TelemetryReport>) -> bool {
        self.backlog_taken.insert(node);
        let warm = backlog.len() as u64 >= self.aggregator.config().evidence_warmup_samples;
        if backlog.is_empty() || (!warm && self.restored.contains(&node)) {
            return false;
        }
        self.aggregator.forget(node);
        self.board.forget(node);
        self.risks.remove(&node);
        for report in backlog {
            self.on_telemetry(node, region, report);
        }
        self.disk_warned(node)
    }

    /// The node's observed failures in the prior's window before `now_ms`, and the prior's
    /// P(failure within the node model's horizon) for that many.
    fn prior_probability(&self, node: NodeId, now_ms: u64) -> (u32, Option<f64>) {
        let window_ms = (prior::WINDOW_DAYS * 86_400_000.0) as u64;
        let recent = self
            .failures
            .get(&node)
            .map_or(0, |f| f.iter().filter(|&&t| t <= now_ms && now_ms - t < window_ms).count());
        let recent = u32::try_from(recent).unwrap_or(u32::MAX);
        let horizon_secs = self.node_model.as_ref().map_or(120, |m| m.horizon_secs);
        (recent, self.prior.as_ref().map(|p| p.probability(recent, horizon_secs)))
    }

    /// Failures the shard manager observed before (read back from the meta shard at its
    /// start): `(node, at_ms)`.
    pub fn restore_failures(&mut self, failures: impl IntoIterator<Item = (NodeId, u64)>) {
        for (node, at) in failures {
            self.failures.entry(node).or_default().push(at);
        }
    }

    fn disk_probability(&self, node: NodeId) -> Option<f64> {
        let (m, pushed) = (self.disk_model.as_ref()?, self.pushed.get(&node)?);
        let mut table = Table::new(m.features.len());
        // Pushed counters are one day: deltas (which need history) are missing.
        table.push(m.features.iter().map(|f| pushed.values.get(f).copied().unwrap_or(f64::NAN)).collect());
        m.predict(&table).first().copied()
    }

    /// Stop tracking a node that left the cluster.
    pub fn forget(&mut self, node: NodeId) {
        self.aggregator.forget(node);
        self.board.forget(node);
        self.pushed.remove(&node);
        self.risks.remove(&node);
    }

    /// What proactive migration needs from the failure analysis: each node's combined
    /// probability of failing within the horizon (nodes without one are left out), each
    /// region's, each node's latest round trip to its fastest peer (ms), and the nodes whose
    /// disk or links are under an active warning.
    pub fn migration_inputs(&self) -> RiskInputs {
        let nodes: BTreeMap<NodeId, f64> =
            self.risks.iter().filter_map(|(id, r)| Some((*id, finite(r.probability?)?))).collect();
        let all: Vec<NodeRisk> = self.risks.values().cloned().collect();
        let regions =
            risk::regions(&all).into_iter().filter_map(|r| Some((r.region, finite(r.probability?)?))).collect();
        let rtt = self
            .aggregator
            .nodes()
            .into_iter()
            .filter_map(|(id, _)| {
                let last = self.aggregator.samples(id).last()?;
                Some((id, *last.values.get(&Signal::PeerRttMinMs).filter(|v| v.is_finite())?))
            })
            .collect();
        let degraded = self.board.active().iter().filter(|w| w.kind.slows_leaders()).map(|w| w.node).collect();
        RiskInputs { nodes, regions, rtt_ms: rtt, degraded }
    }

    /// The risk report.
    pub fn risk(&self) -> RiskReport {
        let nodes: Vec<NodeRisk> = self.risks.values().cloned().collect();
        RiskReport {
            regions: risk::regions(&nodes),
            nodes,
            models: ModelStatus {
                node_model: self.node_model.as_ref().map(ModelInfo::of),
                disk_model: self.disk_model.as_ref().map(ModelInfo::of),
                last_retrain: self.last_retrain.clone(),
                restored_nodes: self.restored.len(),
            },
        }
    }

    /// The predictions as metric values: each node's and region's probability, and the active
    /// warnings of every kind.
    pub fn gauges(&self) -> crate::metrics::RiskGauges {
        let report = self.risk();
        let active = self.board.active();
        crate::metrics::RiskGauges {
            nodes: report.nodes.iter().filter_map(|n| Some((n.node, n.region.clone(), n.probability?))).collect(),
            regions: report.regions.iter().filter_map(|r| Some((r.region.clone(), r.probability?))).collect(),
            warnings: WarningKind::ALL
                .iter()
                .map(|k| (k.to_string(), active.iter().filter(|w| w.kind == *k).count() as u64))
                .collect(),
        }
    }

    /// Every warning the board kept: (node, kind, raised, cleared), from its events (a
    /// warning still active whose raising fell out of the kept events counts from its
    /// `raised_at_ms`).
    pub fn warning_spans(&self) -> Vec<(u64, String, u64, Option<u64>)> {
        let mut open: BTreeMap<(u64, String), usize> = BTreeMap::new();
        let mut out: Vec<(u64, String, u64, Option<u64>)> = Vec::new();
        for e in self.board.events_after(0, MAX_WARNING_EVENTS) {
            let key = (e.warning.node, e.warning.kind.to_string());
            match e.action {
                WarningAction::Raised => {
                    open.insert(key.clone(), out.len());
                    out.push((key.0, key.1, e.at_ms, None));
                }
                WarningAction::Cleared => match open.remove(&key) {
                    Some(i) => out[i].3 = Some(e.at_ms),
                    None => out.push((key.0, key.1, e.warning.raised_at_ms, Some(e.at_ms))),
                },
            }
        }
        for w in self.board.active() {
            if !open.contains_key(&(w.node, w.kind.to_string())) {
                out.push((w.node, w.kind.to_string(), w.raised_at_ms, None));
            }
        }
        out
    }

    /// Answers a query; `now_ms` stamps pushed counters.
    pub fn answer(&mut self, query: PfaQuery, now_ms: u64) -> Result<String, ProtoError> {
        match query {
            PfaQuery::Risk => json(&self.risk()),
            PfaQuery::Warnings { after_seq, limit } => json(&WarningsAnswer {
                active: self.board.active(),
                events: self.board.events_after(after_seq, limit.min(MAX_ITEMS_PER_ANSWER) as usize),
                next_seq: self.board.next_seq(),
            }),
            PfaQuery::Telemetry { node, after_ms, limit } => {
                let samples: Vec<&TelemetrySample> = self
                    .aggregator
                    .samples(node)
                    .filter(|s| s.at_ms > after_ms)
                    .take(limit.min(MAX_ITEMS_PER_ANSWER) as usize)
                    .collect();
                json(&samples)
            }
            // Read from the meta shard by the caller (see `pfa_store::history`).
            PfaQuery::History { .. } => Err(ProtoError::Internal("history is read from the meta shard".into())),
            // Made by the caller from the shard manager's records too (`Manager::pfa_report`).
            PfaQuery::Report { .. } => Err(ProtoError::Internal("the report is made with the shard manager".into())),
            PfaQuery::PushCounters { node, counters } => {
                let pushed = PushedCounters { at_ms: now_ms, values: counters };
                pushed.validate().map_err(ProtoError::Invalid)?;
                self.pushed.insert(node, pushed);
                let p = self.disk_probability(node);
                if let Some(r) = self.risks.get_mut(&node) {
                    r.disk_probability = p;
                    r.probability = risk::any_fails([r.telemetry_probability, p, r.prior_probability]);
                }
                json(&serde_json::json!({ "node": node, "disk_probability": p }))
            }
        }
    }
}

fn json<T: Serialize>(v: &T) -> Result<String, ProtoError> {
    serde_json::to_string(v).map_err(|e| ProtoError::Internal(format!("pfa answer: {e}")))
}

/// A probability, if it is one (a NaN from a model is left out, never passed on).
fn finite(p: f64) -> Option<f64> {
    p.is_finite().then(|| p.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(at_ms: u64, sync_ms: f64) -> TelemetryReport {
        TelemetryReport { at_ms, values: [("engine_sync_mean_ms".to_string(), sync_ms)].into_iter().collect() }
    }

    fn keys(round: &PfaRound, kind: &[u8]) -> Vec<Vec<u8>> {
        let prefix = [pfa_store::PFA_PREFIX, kind].concat();
        round.writes.iter().filter(|w| w.key.starts_with(&prefix)).map(|w| w.key.clone()).collect()
    }

    /// Finished minutes are written once; a failure is counted once per outage (also across a
    /// manager start that finds the node down already); episodes go round a bounded ring; a
    /// removed node's history is deleted.
    #[test]
    fn rounds_write_minutes_and_failures_once_and_episodes_into_a_ring() {
        let cfg = PfaConfig {
            max_episodes: 2,
            retrain_interval_ms: 0,
            healthy_episode_interval_ms: 0,
            ..PfaConfig::default()
        };
        let mut st = PfaState::new(cfg, None, None);
        let none = BTreeSet::new();
        st.on_manager_start(&[], None, &none, 0);
        let mut t = 0;
        let mut feed = |st: &mut PfaState, secs: u64, nodes: &[u64]| {
            for _ in 0..secs {
                t += 1_000;
                for &n in nodes {
                    st.on_telemetry(n, "r", report(t, 2.0));
                }
            }
            t
        };
        let now = feed(&mut st, 130, &[1, 2, 3]);
        let r = st.round(now, &none, &none);
        assert_eq!(keys(&r, b"h/").len(), 6, "two finished minutes of three nodes");
        assert!(st.round(now, &none, &none).writes.is_empty(), "nothing twice");
        let down3: BTreeSet<u64> = [3].into();
        let mut slots = Vec::new();
        for outage in 0..3 {
            let now = feed(&mut st, 5, &[1, 2]);
            let r = st.round(now, &down3, &none);
            assert_eq!(keys(&r, b"f/").len(), 1, "outage {outage}: one failure");
            slots.extend(keys(&r, b"e/"));
            assert_eq!(keys(&r, b"state").len(), 1);
            let again = st.round(now, &down3, &none);
            assert!(keys(&again, b"f/").is_empty() && keys(&again, b"e/").is_empty(), "counted once");
            feed(&mut st, 5, &[1, 2, 3]);
        }
        assert_eq!(slots, vec![pfa_store::episode_key(0), pfa_store::episode_key(1), pfa_store::episode_key(0)]);
        assert_eq!(st.risk().nodes.iter().find(|n| n.node == 3).map(|n| n.recent_failures), Some(3));
        // A new manager that finds node 3 down does not count that outage again.
        let persisted = st.persisted.clone();
        st.on_manager_start(&[], Some(persisted), &down3, t);
        assert!(keys(&st.round(t, &down3, &none), b"f/").is_empty());
        assert_eq!(st.persisted.episode_seq, 3, "the ring position survives");
        let r = st.round(t, &none, &down3);
        assert_eq!(keys(&r, b"h/").len(), 1_440, "a removed node's history ring is deleted");
        assert!(r.writes.iter().all(|w| w.value.is_none()));
    }

    /// A shard manager that takes over (design.md §6: a risk-driven leader shift moves it
    /// off the failing node) and replays the nodes' telemetry backlogs judges them as its
    /// predecessor did: the disk warning stands at once, where a manager without the
    /// backlog starts its warm-up and sees nothing.
    #[test]
    fn a_new_manager_replaying_the_backlog_keeps_the_disk_warning() {
        let none = BTreeSet::new();
        let mut old = PfaState::new(PfaConfig::default(), None, None);
        old.on_manager_start(&[], None, &none, 0);
        let mut sent: BTreeMap<NodeId, Vec<TelemetryReport>> = BTreeMap::new();
        let mut t = 0;
        let mut raised_at = None;
        for i in 0..400u64 {
            t += 200;
            for n in 1..=3 {
                // Node 2's sync latency ramps up after 300 samples.
                let ms = if n == 2 && i >= 300 { 2.0 + (i - 300) as f64 * 2.0 } else { 2.0 };
                let r = report(t, ms);
                sent.entry(n).or_default().push(r.clone());
                if old.on_telemetry(n, "r", r) && raised_at.is_none() {
                    raised_at = Some(i);
                }
            }
        }
        let raised_at = raised_at.expect("the live manager warns about node 2");
        assert!(old.migration_inputs().degraded.contains(&2));

        let take_over = |replay: bool| {
            let mut new = PfaState::new(PfaConfig::default(), None, None);
            new.on_manager_start(&[], None, &none, t);
            let mut wake = false;
            for n in 1..=3 {
                assert!(new.wants_backlog(n), "a new tenure asks every node once");
                let samples = &sent[&n];
                let (last, before) = samples.split_last().expect("samples");
                // The node keeps its newest MAX_TELEMETRY_BACKLOG_SAMPLES.
                let from = before.len().saturating_sub(super::super::heartbeat::MAX_TELEMETRY_BACKLOG_SAMPLES);
                if replay {
                    wake |= new.replay_backlog(n, "r", before[from..].to_vec());
                    assert!(!new.wants_backlog(n), "asked once");
                }
                wake |= new.on_telemetry(n, "r", last.clone());
            }
            (new.migration_inputs().degraded, wake)
        };
        let (degraded, wake) = take_over(true);
        assert_eq!(degraded, [2].into(), "warned at sample {raised_at}; the successor keeps the warning");
        assert!(wake, "the replay wakes the manager");
        let (degraded, _) = take_over(false);
        assert!(degraded.is_empty(), "without the backlog the successor warms up first");
    }
}
