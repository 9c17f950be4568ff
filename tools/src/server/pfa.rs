//! The failure analysis on the shard manager's node: telemetry from every heartbeat goes into
//! the aggregator; each sample updates the node's warnings and, with a model loaded, its
//! failure probability. Answers `Request::Pfa` (risk, warnings, raw telemetry) and takes the
//! counters operators push.
//!
//! Every node keeps one, but only the manager's is fed (heartbeats go to the manager); a new
//! manager starts with empty rings and fills them within the detectors' warm-up.

use std::collections::BTreeMap;

use presage_client::{PfaQuery, ProtoError};
use presage_pfa::aggregate::{Aggregator, AggregatorConfig};
use presage_pfa::model::{FailureModel, Table};
use presage_pfa::risk::{self, ModelInfo, ModelStatus, NodeRisk, RiskReport};
use presage_pfa::telemetry::{PushedCounters, Signal, TelemetrySample};
use presage_pfa::warning::{WarningBoard, WarningsAnswer};
use presage_shardmgr::{NodeId, TelemetryReport};
use serde::Serialize;

/// Quiet samples after which a warning clears.
pub const WARNING_CLEAR_AFTER_SAMPLES: u32 = 30;
/// Warning events kept for readers.
pub const MAX_WARNING_EVENTS: usize = 10_000;
/// Most warning events or telemetry samples one answer carries.
pub const MAX_ITEMS_PER_ANSWER: u32 = 10_000;

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
}

impl PfaState {
    /// A state with the given models (either may be absent).
    pub fn new(node_model: Option<FailureModel>, disk_model: Option<FailureModel>) -> PfaState {
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
        }
    }

    /// Take one node's sample (from its heartbeat).
    pub fn on_telemetry(&mut self, node: NodeId, region: &str, report: TelemetryReport) {
        let values = report.values.iter().filter_map(|(k, v)| Signal::from_name(k).map(|s| (s, *v))).collect();
        let sample = TelemetrySample { at_ms: report.at_ms, values };
        if !self.aggregator.ingest(node, region, sample) {
            return;
        }
        self.board.observe(node, region, report.at_ms, self.aggregator.evidence(node));
        let telemetry_probability = self.node_model.as_ref().and_then(|m| {
            let features = self.aggregator.features(node)?;
            let mut table = Table::new(m.features.len());
            let row = self.node_feature_map.iter().map(|i| i.map_or(f64::NAN, |i| features[i])).collect();
            table.push(row);
            m.predict(&table).first().copied()
        });
        let disk_probability = self.disk_probability(node);
        let warnings = self.board.active().iter().filter(|w| w.node == node).map(|w| w.kind).collect();
        self.risks.insert(
            node,
            NodeRisk {
                node,
                region: region.to_string(),
                at_ms: report.at_ms,
                probability: risk::any_fails([telemetry_probability, disk_probability]),
                telemetry_probability,
                disk_probability,
                warnings,
            },
        );
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
