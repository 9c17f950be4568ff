//! Per-range risk (seed 004): how likely a shard's requests are to suffer soon, from its
//! replicas' nodes and its own service.
//!
//! - **Nodes**: the failure analysis's probability for each voter's node. A leader's node is
//!   on every request's path, so its risk counts whole; a follower's only through the quorum:
//!   the shard stops when a majority of its voters fail (for independent nodes, the chance
//!   that at least a majority fails), and a risky follower alone counts half (one more loss
//!   and the quorum is gone for a group of three).
//! - **Latency**: the shard's p99 on its leader against the median shard's: 0 at or under
//!   the median, 1 at [`SLOW_P99_FACTOR`] times it or more, linear between; a shard with fewer
//!   than [`MIN_QPS`] requests/s has no latency signal.
//! - **Errors**: the share of its requests the leader failed: 1 at [`FAILING_ERROR_SHARE`] or
//!   more, linear below.
//! - **Risk**: the largest of the three (one number an operator can trace to its cause:
//!   [`RangeRisk::cause`]).
//!
//! Pure: no clock, no I/O.

use serde::{Deserialize, Serialize};

use crate::load::ShardLoad;
use crate::model::NodeId;

/// A p99 this many times the median shard's is a latency risk of 1.
pub const SLOW_P99_FACTOR: f64 = 4.0;
/// Failed requests making up this share of a shard's requests are an error risk of 1.
pub const FAILING_ERROR_SHARE: f64 = 0.05;
/// Below this many requests per second a shard's p99 is too thin to judge.
pub const MIN_QPS: f64 = 1.0;

/// One shard's risk and its parts, each in [0, 1].
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RangeRisk {
    /// The largest of the parts.
    pub risk: f64,
    /// From its voters' nodes.
    pub nodes: f64,
    /// From its p99 against the median shard's.
    pub latency: f64,
    /// From its error share.
    pub errors: f64,
}

impl RangeRisk {
    /// Which part the risk comes from: `nodes`, `latency` or `errors` (`none` at 0).
    pub fn cause(&self) -> &'static str {
        if self.risk <= 0.0 {
            "none"
        } else if self.nodes >= self.latency && self.nodes >= self.errors {
            "nodes"
        } else if self.latency >= self.errors {
            "latency"
        } else {
            "errors"
        }
    }
}

/// The risk of a shard whose voters' nodes have `voters` risks (`None`: unknown, counted as
/// 0), led by `leader`, with `load` as last reported; `median_p99_ms` is the median p99 of
/// the shards with requests (0: none).
pub fn range_risk(
    voters: &[(NodeId, Option<f64>)],
    leader: Option<NodeId>,
    load: &ShardLoad,
    median_p99_ms: f64,
) -> RangeRisk {
    let p = |r: Option<f64>| r.unwrap_or(0.0).clamp(0.0, 1.0);
    let leader_risk = voters.iter().find(|(n, _)| Some(*n) == leader).map_or(0.0, |(_, r)| p(*r));
    let follower_risk = voters.iter().filter(|(n, _)| Some(*n) != leader).map(|(_, r)| p(*r)).fold(0.0, f64::max);
    let risks: Vec<f64> = voters.iter().map(|(_, r)| p(*r)).collect();
    let nodes = leader_risk.max(follower_risk / 2.0).max(majority_fails(&risks));
    let latency = if load.qps() >= MIN_QPS && median_p99_ms > 0.0 && load.p99_ms > median_p99_ms {
        ((load.p99_ms / median_p99_ms - 1.0) / (SLOW_P99_FACTOR - 1.0)).min(1.0)
    } else {
        0.0
    };
    let served = load.qps() + load.errors_per_sec;
    let errors = if served > 0.0 { (load.errors_per_sec / served / FAILING_ERROR_SHARE).min(1.0) } else { 0.0 };
    let risk = nodes.max(latency).max(errors);
    debug_assert!((0.0..=1.0).contains(&risk));
    RangeRisk { risk, nodes, latency, errors }
}

/// The chance that a majority of independent nodes with failure chances `p` fail (exact,
/// by the distribution of the number failing; a handful of voters).
fn majority_fails(p: &[f64]) -> f64 {
    if p.is_empty() {
        return 0.0;
    }
    // dist[k]: chance exactly k have failed among those seen so far.
    let mut dist = vec![1.0];
    for &q in p {
        let mut next = vec![0.0; dist.len() + 1];
        for (k, d) in dist.iter().enumerate() {
            next[k] += d * (1.0 - q);
            next[k + 1] += d * q;
        }
        dist = next;
    }
    let majority = p.len() / 2 + 1;
    dist[majority..].iter().sum::<f64>().clamp(0.0, 1.0)
}

/// The median of the p99s of `loads` with at least [`MIN_QPS`] requests/s (0: none).
pub fn median_p99_ms<'a>(loads: impl IntoIterator<Item = &'a ShardLoad>) -> f64 {
    let mut v: Vec<f64> =
        loads.into_iter().filter(|l| l.qps() >= MIN_QPS && l.p99_ms > 0.0).map(|l| l.p99_ms).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(qps: f64, p99_ms: f64, errors_per_sec: f64) -> ShardLoad {
        ShardLoad { read_qps: qps, p99_ms, errors_per_sec, ..ShardLoad::default() }
    }

    #[test]
    fn a_risky_leader_counts_whole_a_risky_follower_half() {
        let quiet = load(100.0, 1.0, 0.0);
        let voters = [(1, Some(0.8)), (2, Some(0.0)), (3, None)];
        let led_by_risky = range_risk(&voters, Some(1), &quiet, 1.0);
        assert_eq!((led_by_risky.risk, led_by_risky.cause()), (0.8, "nodes"));
        let followed_by_risky = range_risk(&voters, Some(2), &quiet, 1.0);
        assert!((followed_by_risky.risk - 0.4).abs() < 1e-9, "{followed_by_risky:?}");
        let healthy = range_risk(&[(1, Some(0.0)), (2, Some(0.0)), (3, Some(0.0))], Some(1), &quiet, 1.0);
        assert_eq!((healthy.risk, healthy.cause()), (0.0, "none"));
    }

    #[test]
    fn two_risky_followers_threaten_the_quorum() {
        // Both followers at 0.7: a majority fails with 0.49 (two of three), above half of 0.7.
        let r = range_risk(&[(1, Some(0.0)), (2, Some(0.7)), (3, Some(0.7))], Some(1), &load(10.0, 1.0, 0.0), 1.0);
        assert!((r.nodes - 0.49).abs() < 1e-9, "{r:?}");
        assert!((majority_fails(&[0.5; 3]) - 0.5).abs() < 1e-9);
        assert_eq!(majority_fails(&[]), 0.0);
    }

    #[test]
    fn a_slow_or_failing_range_is_risky_on_healthy_nodes() {
        let voters = [(1, Some(0.0)), (2, Some(0.0)), (3, Some(0.0))];
        let slow = range_risk(&voters, Some(1), &load(100.0, 2.5, 0.0), 1.0);
        assert!((slow.latency - 0.5).abs() < 1e-9 && slow.cause() == "latency", "{slow:?}");
        let very_slow = range_risk(&voters, Some(1), &load(100.0, 64.0, 0.0), 1.0);
        assert_eq!(very_slow.risk, 1.0);
        let idle_but_slow = range_risk(&voters, Some(1), &load(0.1, 64.0, 0.0), 1.0);
        assert_eq!(idle_but_slow.latency, 0.0, "too few requests to judge");
        let failing = range_risk(&voters, Some(1), &load(95.0, 1.0, 5.0), 1.0);
        assert!((failing.errors - 1.0).abs() < 1e-9 && failing.cause() == "errors", "{failing:?}");
        let some = range_risk(&voters, Some(1), &load(99.0, 1.0, 1.0), 1.0);
        assert!((some.errors - 0.2).abs() < 1e-9, "1% failed: {some:?}");
    }

    #[test]
    fn the_median_p99_ignores_idle_shards() {
        let loads = [load(100.0, 1.0, 0.0), load(100.0, 2.0, 0.0), load(100.0, 8.0, 0.0), load(0.0, 500.0, 0.0)];
        assert_eq!(median_p99_ms(&loads), 2.0);
        assert_eq!(median_p99_ms(&[]), 0.0);
    }
}
