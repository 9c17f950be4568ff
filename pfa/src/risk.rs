//! Failure risk per node and per region, and the status of the models behind it.
//!
//! A node's risk combines, as independent causes, the node model's probability (from its
//! telemetry features), the drive model's (from SMART counters an operator pushed) and the
//! failure-history prior's (from its failures in the last 30 days, rates from the LANL
//! records, see [`crate::prior`]): `1 - (1 - p_node)(1 - p_disk)(1 - p_prior)`. A region's risk is the probability that at least one of its
//! nodes fails within the horizon, `1 - Π(1 - p_i)`: the chance the region loses a replica.
//! Without any model the risk is unknown (`null`), never a made-up number.
//!
//! `NodeRisk` (node model, drive model and history prior combined as independent causes),
//! `RegionRisk` (a correlated failure: P(at least two of its nodes fail); a one-node region fails
//! with its node, so one sick node does not rule out a spare beside it), `ModelStatus`,
//! `RiskReport`.

use serde::{Deserialize, Serialize};

use crate::model::{FailureModel, ModelKind, TrainingSummary};
use crate::scores::Metrics;
use crate::warning::WarningKind;

/// One node's risk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeRisk {
    /// The node.
    pub node: u64,
    /// Its region.
    pub region: String,
    /// When it was computed (the node's last sample), ms since the Unix epoch.
    pub at_ms: u64,
    /// P(failure within the horizon), combined; None without a model.
    pub probability: Option<f64>,
    /// The node model's part.
    pub telemetry_probability: Option<f64>,
    /// The drive model's part (from pushed SMART counters).
    pub disk_probability: Option<f64>,
    /// The failure-history prior's part.
    #[serde(default)]
    pub prior_probability: Option<f64>,
    /// Failures of the node the shard manager observed in the prior's window.
    #[serde(default)]
    pub recent_failures: u32,
    /// The kinds of the node's active warnings.
    pub warnings: Vec<WarningKind>,
}

/// One region's risk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegionRisk {
    /// The region.
    pub region: String,
    /// P(the region fails within the horizon) as a correlated failure: at least two of its
    /// nodes fail ([`at_least_two_fail`]); a region of one node fails with it. One sick node
    /// is that node's risk, not its region's: a healthy spare beside it is still a target.
    /// None when no node has a probability.
    pub probability: Option<f64>,
    /// Nodes in it.
    pub nodes: usize,
    /// Its riskiest node.
    pub riskiest_node: Option<u64>,
}

/// `1 - Π(1 - p)` over the known probabilities; None when none is known.
pub fn any_fails(ps: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let mut survive = None;
    for p in ps.into_iter().flatten() {
        survive = Some(survive.unwrap_or(1.0) * (1.0 - p.clamp(0.0, 1.0)));
    }
    survive.map(|s| 1.0 - s)
}

/// P(at least two of the events fail) for independent probabilities (the unknown left out):
/// `1 - P(none) - P(exactly one)`; one known probability is returned as it is (a region of
/// one node is lost with it); None when none is known.
pub fn at_least_two_fail(ps: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    // dp[k]: P(exactly k failed so far), k = 0, 1.
    let (mut none, mut one, mut count) = (1.0, 0.0, 0usize);
    let mut only = 0.0;
    for p in ps.into_iter().flatten() {
        let p = p.clamp(0.0, 1.0);
        one = one * (1.0 - p) + none * p;
        none *= 1.0 - p;
        count += 1;
        only = p;
    }
    match count {
        0 => None,
        1 => Some(only),
        _ => Some((1.0 - none - one).clamp(0.0, 1.0)),
    }
}

/// Regions' risks from their nodes' (a correlated failure: [`RegionRisk::probability`]).
pub fn regions(nodes: &[NodeRisk]) -> Vec<RegionRisk> {
    let mut names: Vec<&str> = nodes.iter().map(|n| n.region.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|region| {
            let members: Vec<&NodeRisk> = nodes.iter().filter(|n| n.region == region).collect();
            let riskiest = members
                .iter()
                .filter_map(|n| n.probability.map(|p| (n.node, p)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(n, _)| n);
            RegionRisk {
                region: region.to_string(),
                probability: at_least_two_fail(members.iter().map(|n| n.probability)),
                nodes: members.len(),
                riskiest_node: riskiest,
            }
        })
        .collect()
}

/// What is known about a loaded model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// What it predicts.
    pub kind: ModelKind,
    /// Its version.
    pub version: u64,
    /// Horizon, seconds.
    pub horizon_secs: u64,
    /// Number of features.
    pub features: usize,
    /// Decision threshold.
    pub threshold: f64,
    /// What it was trained on.
    pub trained_on: TrainingSummary,
    /// Its validation metrics.
    pub validation: Option<Metrics>,
}

impl ModelInfo {
    /// The status of `model`.
    pub fn of(model: &FailureModel) -> ModelInfo {
        ModelInfo {
            kind: model.kind,
            version: model.version,
            horizon_secs: model.horizon_secs,
            features: model.features.len(),
            threshold: model.threshold,
            trained_on: model.trained_on.clone(),
            validation: model.validation.clone(),
        }
    }
}

/// The models behind the risk figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelStatus {
    /// The node model (telemetry), if loaded.
    pub node_model: Option<ModelInfo>,
    /// The drive model (SMART), if loaded.
    pub disk_model: Option<ModelInfo>,
    /// The shard manager's last retraining of the node model.
    #[serde(default)]
    pub last_retrain: Option<crate::retrain::RetrainReport>,
    /// Nodes whose detectors this shard manager restored from the persisted history.
    #[serde(default)]
    pub restored_nodes: usize,
}

/// Everything `presage-ctl risk` shows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RiskReport {
    /// Per node.
    pub nodes: Vec<NodeRisk>,
    /// Per region.
    pub regions: Vec<RegionRisk>,
    /// The models.
    pub models: ModelStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(node: u64, region: &str, p: Option<f64>) -> NodeRisk {
        NodeRisk {
            node,
            region: region.into(),
            at_ms: 0,
            probability: p,
            telemetry_probability: p,
            disk_probability: None,
            prior_probability: None,
            recent_failures: 0,
            warnings: Vec::new(),
        }
    }

    #[test]
    fn independent_causes_combine() {
        assert_eq!(any_fails([None, None]), None);
        assert_eq!(any_fails([Some(0.5), None]), Some(0.5));
        assert!((any_fails([Some(0.5), Some(0.5)]).expect("p") - 0.75).abs() < 1e-12);
    }

    #[test]
    fn a_region_is_at_risk_when_more_than_one_node_is() {
        let r = regions(&[
            node(1, "a", Some(0.1)),
            node(2, "a", Some(0.9)),
            node(3, "b", None),
            node(4, "c", Some(0.8)),
            node(5, "d", Some(0.9)),
            node(6, "d", Some(0.8)),
        ]);
        assert_eq!(r.len(), 4);
        // One sick node beside a healthy one: the region is barely at risk.
        assert!((r[0].probability.expect("a") - 0.1 * 0.9).abs() < 1e-12);
        assert_eq!((r[0].nodes, r[0].riskiest_node), (2, Some(2)));
        assert_eq!((r[1].probability, r[1].riskiest_node), (None, None));
        // A region of one node fails with it.
        assert_eq!(r[2].probability, Some(0.8));
        // Two sick nodes: the region is.
        assert!((r[3].probability.expect("d") - 0.72).abs() < 1e-12);
        // Three at 0.5: 1 - 1/8 - 3/8.
        assert!((at_least_two_fail([Some(0.5); 3]).expect("p") - 0.5).abs() < 1e-12);
        assert_eq!(at_least_two_fail([None, None]), None);
    }
}
