//! [`ManagerConfig`]: every threshold of the shard manager, with its unit in its name, its
//! default, and validation. Kebab-case in config files (`[shard-manager]` of the node's
//! TOML).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::RiskThresholds;

const MIB: u64 = 1 << 20;

/// The shard manager's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct ManagerConfig {
    /// How often nodes report to the manager.
    pub heartbeat_interval_ms: u64,
    /// A node silent this long is `Suspect`: no new replicas or leaders go to it.
    pub node_suspect_after_ms: u64,
    /// A node silent this long is `Down`.
    pub node_down_after_ms: u64,
    /// Replicas per shard, one per region (fixed at bootstrap).
    pub replication_factor: usize,

    /// Split a shard larger than this.
    pub split_max_size_bytes: u64,
    /// Split a shard with more keys than this.
    pub split_max_keys: u64,
    /// Load split: reads+writes per second above which a shard is hot.
    pub load_split_qps: f64,
    /// Load split: bytes read+written per second above which a shard is hot.
    pub load_split_bytes_per_sec: f64,
    /// Load split: a shard must stay hot this long before it splits.
    pub load_split_window_ms: u64,
    /// Load split: candidate keys tried.
    pub load_split_candidates: usize,
    /// Load split: largest accepted `|left-right|/(left+right)`.
    pub load_split_max_balance: f64,
    /// Load split: largest accepted share of requests crossing the key.
    pub load_split_max_contained: f64,
    /// Spans a leader samples per shard per heartbeat.
    pub max_samples_per_report: usize,

    /// Merge: both shards below this size.
    pub merge_max_size_bytes: u64,
    /// Merge: both shards below this many keys.
    pub merge_max_keys: u64,
    /// Merge: both small and cold (together under half the load-split thresholds) this long.
    pub merge_delay_ms: u64,
    /// Never merge a shard that split less than this long ago.
    pub split_merge_interval_ms: u64,

    /// Balance: act only when a node or group is this fraction above the mean.
    pub balance_tolerance: f64,
    /// Balance: and only when its leader load exceeds the mean by this score (requests/s).
    pub balance_min_leader_load_gap: f64,
    /// Balance: and only when its size exceeds the mean by this many bytes.
    pub balance_min_size_gap_bytes: u64,
    /// Balancing operators started per minute, across the cluster.
    pub max_balance_moves_per_minute: usize,
    /// Operators running at once, across the cluster.
    pub max_running_operators: usize,
    /// An operator step not done after this long times out (and the operator rolls back).
    pub operator_step_timeout_ms: u64,
    /// A step not yet done is sent again after this long.
    pub operator_retry_ms: u64,
    /// Finished operators kept in the meta shard for inspection.
    pub max_finished_operators: usize,

    /// Act on risk (design.md §6). Off, the failure analysis only warns and a node is
    /// replaced once it is declared down (reactive), as in a store without prediction.
    pub proactive_migration: bool,
    /// Proactive migration (design.md §6): prepare (move leaderships away, add learners in
    /// a healthy region) at or above this failure probability within the model's horizon.
    pub risk_warn: f64,
    /// Cut over (swap the prepared learners in for the at-risk replicas) at or above this.
    pub risk_act: f64,
    /// Stand down (drop the prepared learners) below this.
    pub risk_clear: f64,
    /// Stand down (or release an evacuated node) once its risk stayed below `risk-clear`
    /// this long.
    pub migration_clear_after_ms: u64,
    /// Cut over also below `risk-act` once the node has been under an early warning that slows
    /// its leaders (its disk or links) this long without a break, once its evacuation started
    /// (at `risk-warn`): a warning that persists is evidence of its own, and a node that leads
    /// nothing any more shows the model less, so its risk can fall back while its disk keeps
    /// failing (0: no such cut-over; `risk-act`, a down node and a second member of the group
    /// being evacuated still cut over).
    pub migration_act_after_ms: u64,
    /// Leaderships moved off one at-risk node per scheduling round (a gradual shift).
    pub migration_leader_moves_per_round: usize,
    /// Leaderships moved off one degraded node (its disk or links under an early warning) per
    /// scheduling round: shedding is urgent, every request to its shards waits on its disk.
    pub shed_leader_moves_per_round: usize,
    /// Replica copies (learners being filled and verified) to or from one node at once:
    /// together with the node's snapshot bandwidth budget this staggers the copies.
    pub max_copies_per_node: usize,
    /// Finished migrations kept in the meta shard for inspection.
    pub max_finished_migrations: usize,
    /// How long before a known event (a maintenance window, a load spike) the cluster starts
    /// preparing for it, unless the event names its own lead time (`crate::events`).
    pub event_lead_ms: u64,
    /// A node of a maintenance window that is still down this long after the window closed
    /// is treated as failed (its replicas are replaced).
    pub maintenance_grace_ms: u64,
    /// Bucket of the load history each forecast is made from (`crate::forecast`).
    pub forecast_interval_ms: u64,
    /// How far ahead load is forecast.
    pub forecast_horizon_ms: u64,
    /// The load's season (a day: what recurs at the same time each day).
    pub forecast_season_ms: u64,
    /// Buckets of history kept per shard (4 bytes each); seasonality needs two seasons.
    pub forecast_max_points: usize,
    /// The policies act on forecasts: a shard forecast to pass the load-split threshold is
    /// split before it does, shards forecast hot are not merged, leaderships are balanced by
    /// forecast load (off: forecasts are only shown).
    pub forecast_balance: bool,
    /// A leadership moved to balance load is not moved again to balance load for this long
    /// (no thrashing on a second's noise).
    pub leader_move_hold_ms: u64,
    /// A range whose risk from its leader (the node's failure risk, or the range's p99 or
    /// errors where it leads; `crate::range_risk`) reaches this has its leadership shifted to
    /// a safer voter, gradually (`crate::shift`).
    pub range_risk_shift: f64,
    /// Over how long a node's risky leaderships are shifted away (a share growing from 0 to
    /// all of them).
    pub shift_period_ms: u64,
    /// How long after a mitigation its ranges' service is compared with before
    /// (`crate::feedback`; a forecast split: at least the forecast horizon).
    pub feedback_judge_ms: u64,
    /// Mitigation records kept (each one meta-shard record).
    pub max_mitigations: usize,
    /// Bucket of the capacity history (each node's bytes and request load; `crate::capacity`).
    pub capacity_interval_ms: u64,
    /// Buckets of capacity history kept (each is one meta-shard record holding every node).
    pub capacity_max_points: usize,
    /// How far ahead capacity advice looks.
    pub capacity_horizon_ms: u64,
    /// Share of a node's `capacity-bytes` it may fill (the rest is room for compaction and
    /// for taking a failed peer's replicas).
    pub capacity_disk_fill: f64,
    /// Share of a node's `capacity-qps` its busiest hour may reach (the rest absorbs spikes
    /// and a failed peer's leaderships).
    pub capacity_load_fill: f64,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            heartbeat_interval_ms: 1_000,
            node_suspect_after_ms: 5_000,
            node_down_after_ms: 60_000,
            replication_factor: 3,
            split_max_size_bytes: 384 * MIB,
            split_max_keys: 3_840_000,
            load_split_qps: 3_000.0,
            load_split_bytes_per_sec: (30 * MIB) as f64,
            load_split_window_ms: 10_000,
            load_split_candidates: 20,
            load_split_max_balance: 0.25,
            load_split_max_contained: 0.5,
            max_samples_per_report: 64,
            merge_max_size_bytes: 54 * MIB,
            merge_max_keys: 540_000,
            merge_delay_ms: 300_000,
            split_merge_interval_ms: 3_600_000,
            balance_tolerance: 0.10,
            balance_min_leader_load_gap: 100.0,
            balance_min_size_gap_bytes: 64 * MIB,
            max_balance_moves_per_minute: 30,
            max_running_operators: 64,
            operator_step_timeout_ms: 120_000,
            operator_retry_ms: 1_000,
            max_finished_operators: 1_000,
            proactive_migration: true,
            risk_warn: 0.5,
            risk_act: 0.7,
            risk_clear: 0.3,
            migration_clear_after_ms: 60_000,
            migration_act_after_ms: 20_000,
            migration_leader_moves_per_round: 2,
            shed_leader_moves_per_round: 16,
            max_copies_per_node: 2,
            max_finished_migrations: 64,
            event_lead_ms: 900_000,
            maintenance_grace_ms: 600_000,
            forecast_interval_ms: 600_000,
            forecast_horizon_ms: 900_000,
            forecast_season_ms: 86_400_000,
            forecast_max_points: 320,
            forecast_balance: true,
            leader_move_hold_ms: 60_000,
            range_risk_shift: 0.4,
            shift_period_ms: 300_000,
            feedback_judge_ms: 120_000,
            max_mitigations: 256,
            capacity_interval_ms: 3_600_000,
            capacity_max_points: 720,
            capacity_horizon_ms: 90 * 86_400_000,
            capacity_disk_fill: 0.8,
            capacity_load_fill: 0.7,
        }
    }
}

impl ManagerConfig {
    /// Forecast buckets (the one open now, then enough to cover the horizon) and buckets per
    /// season.
    pub fn forecast_steps(&self) -> (usize, usize) {
        let steps = self.forecast_horizon_ms.div_ceil(self.forecast_interval_ms) as usize + 1;
        let season = (self.forecast_season_ms / self.forecast_interval_ms) as usize;
        (steps, season)
    }

    /// The migration thresholds.
    pub fn thresholds(&self) -> RiskThresholds {
        RiskThresholds { warn: self.risk_warn, act: self.risk_act, clear: self.risk_clear }
    }

    /// Checks every setting.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("heartbeat-interval-ms", self.heartbeat_interval_ms),
            ("load-split-window-ms", self.load_split_window_ms),
            ("operator-step-timeout-ms", self.operator_step_timeout_ms),
            ("operator-retry-ms", self.operator_retry_ms),
            ("split-max-size-bytes", self.split_max_size_bytes),
            ("split-max-keys", self.split_max_keys),
            ("max-mitigations", self.max_mitigations as u64),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::Config { name, reason: "must be positive".into() });
            }
        }
        if self.node_suspect_after_ms < self.heartbeat_interval_ms {
            return Err(Error::Config { name: "node-suspect-after-ms", reason: "below heartbeat-interval-ms".into() });
        }
        if self.node_down_after_ms < self.node_suspect_after_ms {
            return Err(Error::Config { name: "node-down-after-ms", reason: "below node-suspect-after-ms".into() });
        }
        if !(1..=7).contains(&self.replication_factor) {
            return Err(Error::Config { name: "replication-factor", reason: "must be 1 to 7".into() });
        }
        if self.merge_max_size_bytes >= self.split_max_size_bytes || self.merge_max_keys >= self.split_max_keys {
            return Err(Error::Config {
                name: "merge-max-size-bytes",
                reason: "must be below the split size and keys, or shards would split and merge in turn".into(),
            });
        }
        for (name, v) in [
            ("load-split-max-balance", self.load_split_max_balance),
            ("load-split-max-contained", self.load_split_max_contained),
            ("balance-tolerance", self.balance_tolerance),
            ("range-risk-shift", self.range_risk_shift),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(Error::Config { name, reason: format!("{v} is outside [0, 1]") });
            }
        }
        if !(self.load_split_qps > 0.0 && self.load_split_bytes_per_sec > 0.0) {
            return Err(Error::Config { name: "load-split-qps", reason: "thresholds must be positive".into() });
        }
        if self.load_split_candidates == 0 || self.max_samples_per_report == 0 {
            return Err(Error::Config { name: "load-split-candidates", reason: "must be positive".into() });
        }
        let r = self.thresholds();
        if !(0.0 < r.clear && r.clear < r.warn && r.warn <= r.act && r.act <= 1.0) {
            return Err(Error::Config {
                name: "risk-warn",
                reason: format!(
                    "need 0 < risk-clear < risk-warn <= risk-act <= 1, got clear {}, warn {}, act {}",
                    r.clear, r.warn, r.act
                ),
            });
        }
        if self.migration_leader_moves_per_round == 0 {
            return Err(Error::Config { name: "migration-leader-moves-per-round", reason: "must be positive".into() });
        }
        if self.shed_leader_moves_per_round == 0 {
            return Err(Error::Config { name: "shed-leader-moves-per-round", reason: "must be positive".into() });
        }
        if self.max_copies_per_node == 0 {
            return Err(Error::Config { name: "max-copies-per-node", reason: "must be positive".into() });
        }
        if self.event_lead_ms > crate::events::MAX_LEAD_MS {
            return Err(Error::Config { name: "event-lead-ms", reason: "at most a day".into() });
        }
        if self.forecast_interval_ms == 0 || self.forecast_max_points == 0 {
            return Err(Error::Config {
                name: "forecast-interval-ms",
                reason: "interval and points must be positive".into(),
            });
        }
        if self.forecast_horizon_ms / self.forecast_interval_ms > 1_000 || self.forecast_max_points > 10_000 {
            return Err(Error::Config {
                name: "forecast-horizon-ms",
                reason: "at most 1,000 buckets ahead and 10,000 kept per shard".into(),
            });
        }
        if self.capacity_interval_ms == 0 || !(1..=10_000).contains(&self.capacity_max_points) {
            return Err(Error::Config {
                name: "capacity-interval-ms",
                reason: "the interval must be positive and 1 to 10,000 buckets kept".into(),
            });
        }
        if self.capacity_horizon_ms > crate::capacity::MAX_HORIZON_MS {
            return Err(Error::Config { name: "capacity-horizon-ms", reason: "at most ten years".into() });
        }
        for (name, v) in
            [("capacity-disk-fill", self.capacity_disk_fill), ("capacity-load-fill", self.capacity_load_fill)]
        {
            if !(v > 0.0 && v <= 1.0) {
                return Err(Error::Config { name, reason: format!("{v} is outside (0, 1]") });
            }
        }
        if self.max_running_operators == 0 {
            return Err(Error::Config { name: "max-running-operators", reason: "must be positive".into() });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let c = ManagerConfig::default();
        c.validate().expect("defaults");
        let json = serde_json::to_string(&c).expect("encode");
        assert!(json.contains("split-max-size-bytes"), "kebab-case keys");
        let back: ManagerConfig = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, c);
    }

    #[test]
    fn bad_settings_are_refused() {
        let bad = [
            ManagerConfig { merge_max_size_bytes: 400 << 20, ..Default::default() },
            ManagerConfig { node_down_after_ms: 1, ..Default::default() },
            ManagerConfig { load_split_max_balance: 1.5, ..Default::default() },
            ManagerConfig { replication_factor: 0, ..Default::default() },
            ManagerConfig { risk_act: 0.4, ..Default::default() },
            ManagerConfig { risk_clear: 0.5, ..Default::default() },
            ManagerConfig { capacity_disk_fill: 0.0, ..Default::default() },
            ManagerConfig { capacity_max_points: 0, ..Default::default() },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }
}
