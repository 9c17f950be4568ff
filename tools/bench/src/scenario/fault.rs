//! The fault shapes the failing-node story injects into its failing node at the event's
//! start, through the node's admin API (`/v1/faults`, `/v1/faults/network`,
//! `/v1/faults/host`). Each lasts until the node is killed at the event's end.

use serde::Serialize;

/// A fault shape (`presage-bench scenario failing-node --fault`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// Synced and plain writes slow from 0 to 1 s over the event (a disk wearing out).
    Ramp,
    /// Synced and plain writes 250 ms slower at once.
    Step,
    /// Synced and plain writes blocked for the event (at most two minutes), then back.
    Stall,
    /// One write in five 500 ms slower (a RAID member dragging, bad regions).
    Partial,
    /// Reads 200 ms slower.
    Read,
    /// 1% of plain writes fail.
    Errors,
    /// 1% of fsyncs fail.
    FsyncErrors,
    /// Every write refused as ENOSPC would.
    DiskFull,
    /// The node's Raft links delay envelopes by 200 ms and lose 10% of them.
    Network,
    /// Four threads spin in the node (CPU contention).
    Cpu,
    /// The node holds 1 GiB more, every page touched (memory pressure).
    Memory,
}

/// Longest stall the engine accepts, in milliseconds.
const MAX_STALL_MS: u64 = presage_engine::fault::MAX_STALL_MS;

impl Fault {
    /// Every shape, in the campaign's order.
    pub const ALL: [Fault; 11] = [
        Fault::Ramp,
        Fault::Step,
        Fault::Stall,
        Fault::Partial,
        Fault::Read,
        Fault::Errors,
        Fault::FsyncErrors,
        Fault::DiskFull,
        Fault::Network,
        Fault::Cpu,
        Fault::Memory,
    ];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Ramp => "ramp",
            Fault::Step => "step",
            Fault::Stall => "stall",
            Fault::Partial => "partial",
            Fault::Read => "read",
            Fault::Errors => "errors",
            Fault::FsyncErrors => "fsync-errors",
            Fault::DiskFull => "disk-full",
            Fault::Network => "network",
            Fault::Cpu => "cpu",
            Fault::Memory => "memory",
        }
    }

    /// The admin API path and JSON body that start it, for an event of `secs` seconds.
    pub fn injection(self, secs: u64, ramp_end_us: u64) -> (&'static str, serde_json::Value) {
        use serde_json::json;
        let ms = secs.saturating_mul(1000);
        let latency = |us: u64| json!({"latency-start-us": us, "latency-end-us": us});
        let engine = |body: serde_json::Value| ("/v1/faults", body);
        match self {
            Fault::Ramp => {
                let ramp = json!({"latency-start-us": 0, "latency-end-us": ramp_end_us, "ramp-ms": ms});
                engine(json!({"sync": ramp, "write": ramp}))
            }
            Fault::Step => engine(json!({"sync": latency(250_000), "write": latency(250_000)})),
            Fault::Stall => {
                let stall = json!({"stall-ms": ms.min(MAX_STALL_MS)});
                engine(json!({"sync": stall, "write": stall}))
            }
            Fault::Partial => {
                let mut slow = latency(500_000);
                slow["slow-rate"] = json!(0.2);
                engine(json!({"sync": slow, "write": slow, "seed": 11}))
            }
            Fault::Read => engine(json!({"read": latency(200_000)})),
            Fault::Errors => engine(json!({"write": {"error-rate": 0.01}, "seed": 11})),
            Fault::FsyncErrors => engine(json!({"sync": {"error-rate": 0.01}, "seed": 11})),
            Fault::DiskFull => engine(json!({"disk-full": true})),
            Fault::Network => ("/v1/faults/network", json!({"delay-ms": 200, "loss-rate": 0.1, "seed": 11})),
            Fault::Cpu => ("/v1/faults/host", json!({"cpu-threads": 4, "duration-ms": ms.max(1)})),
            Fault::Memory => ("/v1/faults/host", json!({"memory-bytes": 1u64 << 30, "duration-ms": ms.max(1)})),
        }
    }

    /// What the story says when it starts.
    pub fn describe(self, secs: u64) -> String {
        match self {
            Fault::Ramp => format!("its disk starts degrading: write latency 0 -> 1 s over {secs} s"),
            Fault::Step => "its writes turn 250 ms slower".into(),
            Fault::Stall => format!("its disk stalls: writes blocked for {} s", (secs * 1000).min(MAX_STALL_MS) / 1000),
            Fault::Partial => "one write in five turns 500 ms slower".into(),
            Fault::Read => "its reads turn 200 ms slower".into(),
            Fault::Errors => "1% of its writes start failing".into(),
            Fault::FsyncErrors => "1% of its fsyncs start failing".into(),
            Fault::DiskFull => "its disk is full: every write refused".into(),
            Fault::Network => "its Raft links delay envelopes by 200 ms and lose 10%".into(),
            Fault::Cpu => "four busy threads contend for its CPU".into(),
            Fault::Memory => "it comes under memory pressure (1 GiB held)".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shape's injection is a configuration its endpoint accepts.
    #[test]
    fn every_injection_is_a_valid_configuration() {
        for fault in Fault::ALL {
            let (path, body) = fault.injection(60, 1_000_000);
            let ok = match path {
                "/v1/faults" => serde_json::from_value::<presage_engine::FaultConfig>(body.clone())
                    .map_err(|e| e.to_string())
                    .and_then(|c| c.validate().map_err(|e| e.to_string())),
                "/v1/faults/network" => serde_json::from_value::<presage_replication::NetFaultConfig>(body.clone())
                    .map_err(|e| e.to_string())
                    .and_then(|c| c.validate().map_err(|e| e.to_string())),
                "/v1/faults/host" => {
                    serde_json::from_value::<presage_server::host_fault::HostFaultConfig>(body.clone())
                        .map_err(|e| e.to_string())
                        .and_then(|c| c.validate().map_err(|e| e.to_string()))
                }
                other => Err(format!("unknown path {other}")),
            };
            assert!(ok.is_ok(), "{} ({path} {body}): {ok:?}", fault.name());
        }
    }
}
