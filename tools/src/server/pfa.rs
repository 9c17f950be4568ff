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

use std::collections::{BTreeMap, BTreeSet};

use presage_client::{PfaQuery, ProtoError};
use presage_pfa::aggregate::{Aggregator, AggregatorConfig, MinuteSummary};
use presage_pfa::model::{FailureModel, Table};
use presage_pfa::node::Recording;
use presage_pfa::prior::{self, FailurePrior};
use presage_pfa::retrain::{self, RetrainReport};
use presage_pfa::risk::{self, ModelInfo, ModelStatus, NodeRisk, RiskReport};
use presage_pfa::telemetry::{PushedCounters, Signal, TelemetrySample};
use presage_pfa::warning::{WarningBoard, WarningsAnswer};
use presage_shardmgr::{MetaWrite, NodeId, TelemetryReport};
use serde::{Deserialize, Serialize};

use super::pfa_store;

/// Quiet samples after which a warning clears.
pub const WARNING_CLEAR_AFTER_SAMPLES: u32 = 30;
/// Warning events kept for readers.
pub const MAX_WARNING_EVENTS: usize = 10_000;
/// Most warning events or telemetry samples one answer carries.
pub const MAX_ITEMS_PER_ANSWER: u32 = 10_000;
/// Nodes besides the failed one whose rings an episode holds (its peers' features).
pub const MAX_EPISODE_PEERS: usize = 8;

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
    pub fn validate(&self) -> Result<(), String> {
        if self.history_minutes == 0 || self.history_minutes > 100_000 {
            return Err(format!("pfa.history-minutes ({}) must be in 1..=100000", self.history_minutes));
        }
        if self.restore_minutes == 0 || self.restore_minutes > self.history_minutes {
            return Err(format!(
                "pfa.restore-minutes ({}) must be in 1..=history-minutes ({})",
                self.restore_minutes, self.history_minutes
            ));
        }
        if self.max_episodes == 0 || self.max_episodes > retrain::MAX_EPISODES {
            return Err(format!("pfa.max-episodes ({}) must be in 1..={}", self.max_episodes, retrain::MAX_EPISODES));
        }
        if self.max_episode_bytes < 64 << 10 || self.max_episode_bytes > 4 << 20 {
            return Err(format!("pfa.max-episode-bytes ({}) must be between 64 KiB and 4 MiB", self.max_episode_bytes));
        }
        if self.min_failures_to_retrain < 2 {
            return Err("pfa.min-failures-to-retrain must be at least 2 (one is held out to test)".into());
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
    /// When the last healthy episode was kept (or the manager started).
    last_healthy_episode_ms: Option<u64>,
    /// When the next retraining is due; whether one runs.
    next_retrain_ms: Option<u64>,
    retraining: bool,
    last_retrain: Option<RetrainReport>,
    /// Nodes restored from the history by this manager.
    restored: usize,
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
            last_healthy_episode_ms: None,
            next_retrain_ms: None,
            retraining: false,
            last_retrain: None,
            restored: 0,
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
    /// samples went to it), each node's detectors resume from `history`, and what is to be
    /// persisted is counted from now.
    pub fn on_manager_start(&mut self, history: &[MinuteSummary], now_ms: u64) {
        self.aggregator = Aggregator::new(self.aggregator.config().clone());
        let nodes: BTreeSet<u64> = history.iter().map(|m| m.node).collect();
        self.restored = nodes.into_iter().filter(|n| self.aggregator.restore(*n, history)).count();
        self.history_through_ms.clear();
        self.captured.clear();
        self.failures.clear();
        self.last_healthy_episode_ms = Some(now_ms);
        self.next_retrain_ms = (self.cfg.retrain_interval_ms > 0).then(|| now_ms + self.cfg.retrain_interval_ms);
    }

    /// The records to add to the meta shard this round: each node's finished minutes; the
    /// failure episode of each node in `down` not kept yet; a healthy episode when one is due
    /// (no node down, no warning active).
    pub fn meta_writes(&mut self, now_ms: u64, down: &BTreeSet<NodeId>) -> Vec<MetaWrite> {
        let mut out = Vec::new();
        for (node, _) in self.aggregator.nodes() {
            let after = self.history_through_ms.get(&node).map_or(0, |m| m + 60_000);
            for m in self.aggregator.minute_summaries(node, after, now_ms) {
                self.history_through_ms.insert(node, m.minute_ms);
                out.push(presage_shardmgr::meta::put(pfa_store::history_key(&m, self.cfg.history_minutes), &m));
            }
        }
        for &node in down {
            if !self.captured.insert(node) {
                continue;
            }
            // The failure counts for the prior even when this manager has no samples of the
            // node (it failed before this manager started); the episode needs them.
            let at_ms = self.aggregator.last_sample_ms(node).unwrap_or(now_ms);
            let list = self.failures.entry(node).or_default();
            if !list.contains(&at_ms) {
                list.push(at_ms);
                out.push(presage_shardmgr::meta::put(pfa_store::failure_key(node, at_ms), &serde_json::json!({})));
            }
            if self.aggregator.samples(node).next().is_some() {
                let episode = self.episode(Some((node, at_ms)));
                out.extend(self.encode_episode(&episode, at_ms, node));
            }
        }
        let healthy_due = self.cfg.healthy_episode_interval_ms > 0
            && self.last_healthy_episode_ms.is_some_and(|t| now_ms >= t + self.cfg.healthy_episode_interval_ms);
        if healthy_due && down.is_empty() && self.board.active().is_empty() {
            self.last_healthy_episode_ms = Some(now_ms);
            let episode = self.episode(None);
            out.extend(self.encode_episode(&episode, now_ms, 0));
        }
        out
    }

    /// A snapshot of the rings: the failed node's and up to [`MAX_EPISODE_PEERS`] others.
    fn episode(&self, failed: Option<(NodeId, u64)>) -> Recording {
        let keep: BTreeSet<u64> = failed
            .map(|(n, _)| n)
            .into_iter()
            .chain(self.aggregator.nodes().into_iter().map(|(n, _)| n).filter(|n| failed.is_none_or(|(f, _)| f != *n)))
            .take(MAX_EPISODE_PEERS + 1)
            .collect();
        let mut rec = retrain::capture(&self.aggregator, failed);
        rec.rows.retain(|r| keep.contains(&r.node));
        rec
    }

    fn encode_episode(&self, episode: &Recording, at_ms: u64, node: NodeId) -> Option<MetaWrite> {
        match pfa_store::encode_episode(episode, self.cfg.max_episode_bytes) {
            Ok(bytes) => {
                tracing::info!(
                    node,
                    at_ms,
                    rows = episode.rows.len(),
                    bytes = bytes.len(),
                    "failure-analysis episode kept"
                );
                Some(MetaWrite { key: pfa_store::episode_key(at_ms, node), value: Some(bytes) })
            }
            Err(e) => {
                tracing::warn!(node, at_ms, error = %e, "failure-analysis episode not kept");
                None
            }
        }
    }

    /// Whether a retraining is due now; if so it counts as started (see
    /// [`PfaState::retrain_done`]).
    pub fn start_retrain(&mut self, now_ms: u64) -> bool {
        if self.retraining || self.next_retrain_ms.is_none_or(|t| now_ms < t) {
            return false;
        }
        self.retraining = true;
        self.next_retrain_ms = Some(now_ms + self.cfg.retrain_interval_ms);
        true
    }

    /// A retraining ended (with its report when it ran).
    pub fn retrain_done(&mut self, report: Option<RetrainReport>) {
        self.retraining = false;
        if report.is_some() {
            self.last_retrain = report;
        }
    }

    /// Take one node's sample (from its heartbeat).
    pub fn on_telemetry(&mut self, node: NodeId, region: &str, report: TelemetryReport) {
        let values = report.values.iter().filter_map(|(k, v)| Signal::from_name(k).map(|s| (s, *v))).collect();
        let sample = TelemetrySample { at_ms: report.at_ms, values };
        if !self.aggregator.ingest(node, region, sample) {
            return;
        }
        self.captured.remove(&node);
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
        let warnings = self.board.active().iter().filter(|w| w.node == node).map(|w| w.kind).collect();
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
            let list = self.failures.entry(node).or_default();
            if !list.contains(&at) {
                list.push(at);
            }
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
                restored_nodes: self.restored,
            },
        }
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
            PfaQuery::PushCounters { node, counters } => {
                let pushed = PushedCounters { at_ms: now_ms, values: counters };
                pushed.validate().map_err(ProtoError::Invalid)?;
                self.pushed.insert(node, pushed);
                let p = self.disk_probability(node);
                if let Some(r) = self.risks.get_mut(&node) {
                    r.disk_probability = p;
                    r.probability = risk::any_fails([r.telemetry_probability, p]);
                }
                json(&serde_json::json!({ "node": node, "disk_probability": p }))
            }
        }
    }
}

fn json<T: Serialize>(v: &T) -> Result<String, ProtoError> {
    serde_json::to_string(v).map_err(|e| ProtoError::Internal(format!("pfa answer: {e}")))
}
