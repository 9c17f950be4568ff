//! The node server's settings (`[server]` in a node's configuration).

use presage_shardmgr::ManagerConfig;
use serde::{Deserialize, Serialize};

use super::admission::AdmissionConfig;
use super::{error, pfa};

/// Settings of the node server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct ServerConfig {
    /// The shard manager's settings (used while this node runs it).
    pub shard_manager: ManagerConfig,
    /// How often the shard manager runs a scheduling round.
    pub schedule_interval_ms: u64,
    /// A request to the local replication node waits at most this long.
    pub request_timeout_ms: u64,
    /// A call to another node waits at most this long.
    pub rpc_timeout_ms: u64,
    /// A merge rolls back if a source replica does not confirm the freeze within this.
    pub merge_confirm_timeout_ms: u64,
    /// A learner is promoted once it is at most this many log entries behind the leader.
    pub learner_max_lag_entries: u64,
    /// Records per write batch to the meta shard.
    pub max_meta_batch_records: usize,
    /// Operator steps being sent at once by the shard manager.
    pub max_commands_in_flight: usize,
    /// Requests this node serves at once (more are refused with `Retry`).
    pub max_inflight_requests: usize,
    /// Largest scan page, in pairs.
    pub max_scan_keys: u32,
    /// Largest scan page, in bytes.
    pub max_scan_bytes: u32,
    /// Most writes in one batch request.
    pub max_batch_ops: usize,
    /// A new node gives up joining after this long.
    pub join_timeout_ms: u64,
    /// The failure analysis (used while this node runs the shard manager).
    pub pfa: pfa::PfaConfig,
    /// Admission by priority when the node is overloaded or at risk.
    pub admission: AdmissionConfig,
    /// Every this often the node checks one shard it leads for replicas that differ
    /// (`super::consistency`); 0 turns the check off.
    pub consistency_check_interval_ms: u64,
    /// Below this many bytes free on the engine's disk the node refuses the client writes it
    /// leads, serving reads, until space returns (`super::disk_space`); 0 turns it off.
    pub reserve_space_bytes: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            shard_manager: ManagerConfig::default(),
            schedule_interval_ms: 1_000,
            request_timeout_ms: 5_000,
            rpc_timeout_ms: 5_000,
            merge_confirm_timeout_ms: 10_000,
            learner_max_lag_entries: 64,
            max_meta_batch_records: 256,
            max_commands_in_flight: 64,
            max_inflight_requests: 4_096,
            max_scan_keys: 10_000,
            max_scan_bytes: 4 << 20,
            max_batch_ops: 10_000,
            join_timeout_ms: 60_000,
            pfa: pfa::PfaConfig::default(),
            admission: AdmissionConfig::default(),
            consistency_check_interval_ms: 60_000,
            reserve_space_bytes: 1 << 30,
        }
    }
}

impl ServerConfig {
    /// Checks every setting.
    pub fn validate(&self) -> Result<(), error::InvalidSetting> {
        self.shard_manager.validate().map_err(|e| error::InvalidSetting(e.to_string()))?;
        self.pfa.validate()?;
        self.admission.validate().map_err(error::InvalidSetting)?;
        if self.admission.max_normal_inflight_requests >= self.max_inflight_requests
            || self.admission.max_bulk_inflight_requests >= self.max_inflight_requests
        {
            return Err(error::InvalidSetting(
                "admission.max-normal-inflight-requests and max-bulk-inflight-requests must be below \
                 max-inflight-requests (critical requests need room above them)"
                    .into(),
            ));
        }
        if self.consistency_check_interval_ms != 0 && self.consistency_check_interval_ms < 1_000 {
            return Err(error::InvalidSetting(
                "consistency-check-interval-ms must be 0 (off) or at least 1000 (each check puts an entry in a \
                 shard's log and reads the shard on every replica)"
                    .into(),
            ));
        }
        for (name, v) in [
            ("schedule-interval-ms", self.schedule_interval_ms),
            ("request-timeout-ms", self.request_timeout_ms),
            ("rpc-timeout-ms", self.rpc_timeout_ms),
            ("merge-confirm-timeout-ms", self.merge_confirm_timeout_ms),
            ("max-meta-batch-records", self.max_meta_batch_records as u64),
            ("max-commands-in-flight", self.max_commands_in_flight as u64),
            ("max-inflight-requests", self.max_inflight_requests as u64),
            ("max-scan-keys", self.max_scan_keys as u64),
            ("max-scan-bytes", self.max_scan_bytes as u64),
            ("max-batch-ops", self.max_batch_ops as u64),
            ("join-timeout-ms", self.join_timeout_ms),
        ] {
            if v == 0 {
                return Err(error::InvalidSetting(format!("{name} must be positive")));
            }
        }
        Ok(())
    }
}
