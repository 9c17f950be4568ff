//! Evaluation of a failure predictor over units (drives, nodes): threshold metrics, ranking
//! metrics (PR-AUC as average precision, ROC-AUC), recall at a fixed false-positive rate and
//! mean lead time. Ties in score are one threshold step, so a binary rule is scored fairly.

use serde::{Deserialize, Serialize};

/// The false-positive rate at which `recall_at_fpr_1pct` is read.
pub const FPR_BUDGET: f64 = 0.01;

/// One evaluated unit: its score (higher = more likely to fail), whether it failed, and, for
/// a failed unit the predictor flagged, how many days before the failure it first did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outcome {
    /// The unit's score (a probability for the model, 0/1 for a rule).
    pub score: f64,
    /// Whether the unit failed.
    pub failed: bool,
    /// Days from the first flag to the failure, for flagged failed units with history.
    pub lead_days: Option<f64>,
}

/// The metrics `presage-ctl pfa eval` reports; field names are the JSON keys scripts read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Flagged units that failed / flagged units (0 when nothing is flagged).
    pub precision: f64,
    /// Failed units flagged / failed units.
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// Healthy units flagged / healthy units.
    pub fpr: f64,
    /// Area under the precision-recall curve (average precision).
    pub pr_auc: f64,
    /// Area under the ROC curve (ties count one half).
    pub roc_auc: f64,
    /// The best recall at a false-positive rate of at most 1%.
    pub recall_at_fpr_1pct: f64,
    /// Mean days from the first flag to the failure over flagged failed units; null for
    /// single-day data.
    pub mean_lead_time_days: Option<f64>,
    /// Units evaluated.
    pub drives: usize,
    /// Units that failed.
    pub failed_drives: usize,
}

impl Metrics {
    /// Metrics of `outcomes` with units flagged at `score >= threshold`; `multi_day` says
    /// whether lead time is measurable.
    pub fn compute(outcomes: &[Outcome], threshold: f64, multi_day: bool) -> Metrics {
        let positives = outcomes.iter().filter(|o| o.failed).count();
        let negatives = outcomes.len() - positives;
        let flagged = |o: &&Outcome| o.score >= threshold;
        let tp = outcomes.iter().filter(flagged).filter(|o| o.failed).count();
        let fp = outcomes.iter().filter(flagged).filter(|o| !o.failed).count();
        let precision = ratio(tp, tp + fp);
        let recall = ratio(tp, positives);
        let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
        let leads: Vec<f64> =
            outcomes.iter().filter(flagged).filter(|o| o.failed).filter_map(|o| o.lead_days).collect();
        let mean_lead_time_days =
            (multi_day && !leads.is_empty()).then(|| leads.iter().sum::<f64>() / leads.len() as f64);
        let curve = Curve::new(outcomes);
        Metrics {
            precision,
            recall,
            f1,
            fpr: ratio(fp, negatives),
            pr_auc: curve.average_precision(),
            roc_auc: curve.roc_auc(),
            recall_at_fpr_1pct: curve.recall_at_fpr(FPR_BUDGET),
            mean_lead_time_days,
            drives: outcomes.len(),
            failed_drives: positives,
        }
    }
}

/// The threshold that maximises F1 on `outcomes` (ties: the higher threshold); 0.5 when no
/// unit failed.
pub fn best_f1_threshold(outcomes: &[Outcome]) -> f64 {
    let curve = Curve::new(outcomes);
    let mut best = (0.0, 0.5);
    for p in &curve.points {
        let precision = ratio(p.tp, p.tp + p.fp);
        let recall = ratio(p.tp, curve.positives);
        let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
        if f1 > best.0 {
            best = (f1, p.threshold);
        }
    }
    best.1
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Cumulative counts at each distinct score, highest first.
struct Curve {
    points: Vec<Point>,
    positives: usize,
    negatives: usize,
}

struct Point {
    threshold: f64,
    tp: usize,
    fp: usize,
}

impl Curve {
    fn new(outcomes: &[Outcome]) -> Curve {
        let mut sorted: Vec<&Outcome> = outcomes.iter().filter(|o| !o.score.is_nan()).collect();
        sorted.sort_by(|a, b| b.score.total_cmp(&a.score));
        let positives = outcomes.iter().filter(|o| o.failed).count();
        let negatives = outcomes.len() - positives;
        let (mut tp, mut fp) = (0, 0);
        let mut points: Vec<Point> = Vec::new();
        for (i, o) in sorted.iter().enumerate() {
            if o.failed {
                tp += 1;
            } else {
                fp += 1;
            }
            let last_of_tie = sorted.get(i + 1).is_none_or(|next| next.score != o.score);
            if last_of_tie {
                points.push(Point { threshold: o.score, tp, fp });
            }
        }
        Curve { points, positives, negatives }
    }

    /// Σ (R_k - R_{k-1}) · P_k over the distinct thresholds.
    fn average_precision(&self) -> f64 {
        let mut ap = 0.0;
        let mut prev_recall = 0.0;
        for p in &self.points {
            let recall = ratio(p.tp, self.positives);
            ap += (recall - prev_recall) * ratio(p.tp, p.tp + p.fp);
            prev_recall = recall;
        }
        ap
    }

    /// Trapezoids over the ROC points (a tie is a diagonal step: one half).
    fn roc_auc(&self) -> f64 {
        if self.positives == 0 || self.negatives == 0 {
            return 0.5;
        }
        let (mut auc, mut prev_tpr, mut prev_fpr) = (0.0, 0.0, 0.0);
        for p in &self.points {
            let tpr = ratio(p.tp, self.positives);
            let fpr = ratio(p.fp, self.negatives);
            auc += (fpr - prev_fpr) * (tpr + prev_tpr) / 2.0;
            (prev_tpr, prev_fpr) = (tpr, fpr);
        }
        auc + (1.0 - prev_fpr) * (1.0 + prev_tpr) / 2.0
    }

    fn recall_at_fpr(&self, budget: f64) -> f64 {
        self.points
            .iter()
            .filter(|p| ratio(p.fp, self.negatives) <= budget)
            .map(|p| ratio(p.tp, self.positives))
            .fold(0.0, f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(score: f64, failed: bool) -> Outcome {
        Outcome { score, failed, lead_days: None }
    }

    #[test]
    fn a_perfect_ranking_scores_one() {
        let outcomes = [o(0.9, true), o(0.8, true), o(0.2, false), o(0.1, false)];
        let m = Metrics::compute(&outcomes, 0.5, false);
        assert_eq!((m.precision, m.recall, m.f1, m.fpr), (1.0, 1.0, 1.0, 0.0));
        assert_eq!((m.pr_auc, m.roc_auc, m.recall_at_fpr_1pct), (1.0, 1.0, 1.0));
        assert_eq!((m.drives, m.failed_drives, m.mean_lead_time_days), (4, 2, None));
    }

    #[test]
    fn known_values_on_a_small_ranking() {
        // Ranked: +, -, +, -  =>  AP = (1/2)(1/1) + (1/2)(2/3) = 0.8333...; ROC-AUC = 3/4.
        let outcomes = [o(0.9, true), o(0.7, false), o(0.6, true), o(0.1, false)];
        let m = Metrics::compute(&outcomes, 0.65, false);
        assert!((m.pr_auc - (0.5 + 1.0 / 3.0)).abs() < 1e-12, "{}", m.pr_auc);
        assert!((m.roc_auc - 0.75).abs() < 1e-12, "{}", m.roc_auc);
        assert_eq!((m.precision, m.recall, m.fpr), (0.5, 0.5, 0.5));
        assert_eq!(m.recall_at_fpr_1pct, 0.5);
    }

    #[test]
    fn a_binary_rule_is_one_step_with_ties_at_one_half() {
        // Rule flags 1 of 2 failed and 1 of 4 healthy.
        let outcomes = [o(1.0, true), o(1.0, false), o(0.0, true), o(0.0, false), o(0.0, false), o(0.0, false)];
        let m = Metrics::compute(&outcomes, 0.5, false);
        // AP: at the flagged step recall 1/2, precision 1/2; then recall 1, precision 2/6.
        assert!((m.pr_auc - (0.25 + 0.5 / 3.0)).abs() < 1e-12, "{}", m.pr_auc);
        // ROC: (fpr 1/4, tpr 1/2) then (1, 1): 1/4·1/4 + 3/4·3/4 = 0.625.
        assert!((m.roc_auc - 0.625).abs() < 1e-12, "{}", m.roc_auc);
        assert_eq!(m.recall_at_fpr_1pct, 0.0);
    }

    #[test]
    fn lead_time_is_the_mean_over_flagged_failures() {
        let outcomes = [
            Outcome { score: 0.9, failed: true, lead_days: Some(4.0) },
            Outcome { score: 0.8, failed: true, lead_days: Some(2.0) },
            Outcome { score: 0.1, failed: true, lead_days: None },
            o(0.1, false),
        ];
        assert_eq!(Metrics::compute(&outcomes, 0.5, true).mean_lead_time_days, Some(3.0));
        assert_eq!(Metrics::compute(&outcomes, 0.5, false).mean_lead_time_days, None);
    }

    #[test]
    fn best_f1_threshold_separates_when_it_can() {
        let outcomes = [o(0.9, true), o(0.8, true), o(0.3, false), o(0.2, false)];
        assert_eq!(best_f1_threshold(&outcomes), 0.8);
    }

    #[test]
    fn the_json_has_the_keys_scripts_read() {
        let m = Metrics::compute(&[o(0.9, true), o(0.1, false)], 0.5, false);
        let v = serde_json::to_value(&m).expect("serialises");
        for key in [
            "precision",
            "recall",
            "f1",
            "fpr",
            "pr_auc",
            "roc_auc",
            "recall_at_fpr_1pct",
            "mean_lead_time_days",
            "drives",
            "failed_drives",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert!(v["mean_lead_time_days"].is_null());
    }
}
