//! Telemetry: the signals a node's agent samples every second, their units, and one sample.
//!
//! The signal catalogue is closed (an enum) so that the aggregator, the failure model's
//! feature list and the warnings agree on names and units. A signal's name ends with its unit.
//!
//! The closed signal catalogue (`Signal`, names end with units, e.g. `engine_sync_mean_ms`), which
//! warning kind each signal is evidence for, which are read on a log scale, their deviation floors
//! and the level below which a change is harmless; `TelemetrySample`; `PushedCounters` (SMART,
//! bounded).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Most operator-pushed counters (SMART attributes) one node may hold.
pub const MAX_PUSHED_COUNTERS: usize = 256;
/// Longest name of a pushed counter, bytes.
pub const MAX_COUNTER_NAME_BYTES: usize = 64;

/// One measured quantity of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// Mean latency of unsynced engine writes over the last interval, ms.
    EngineWriteMeanMs,
    /// Mean latency of synced engine writes (the fsync path), ms.
    EngineSyncMeanMs,
    /// 99th percentile (bucket upper bound) of synced engine writes, ms.
    EngineSyncP99Ms,
    /// Mean latency of engine reads, ms.
    EngineReadMeanMs,
    /// Failed engine operations per second.
    EngineErrorsPerSec,
    /// Whether the engine stalls writes (0 or 1).
    EngineWriteStalled,
    /// How long engine calls have been in flight with none returning, at the sample, ms (a
    /// blocked disk shows here, not in the latency means, which only see calls that return).
    EngineStalledMs,
    /// Bytes compaction still has to rewrite, MiB.
    EnginePendingCompactionMib,
    /// Mean time an I/O spent queued and served on the data device, ms (`/proc/diskstats`).
    DiskAwaitMs,
    /// Share of the interval the data device was busy, percent.
    DiskUtilPct,
    /// I/Os in flight on the data device at the sample.
    DiskInflight,
    /// CPU busy share over all cores, percent (`/proc/stat`).
    CpuBusyPct,
    /// Available memory over total, percent (`/proc/meminfo`).
    MemAvailablePct,
    /// Share of time some task stalled on CPU over the last 10 s, percent (PSI).
    PsiCpuSomePct,
    /// Share of time some task stalled on memory over the last 10 s, percent (PSI).
    PsiMemorySomePct,
    /// Share of time some task stalled on I/O over the last 10 s, percent (PSI).
    PsiIoSomePct,
    /// Round-trip time of a request to the fastest peer, ms: it rises when this node (or its
    /// network) is slow, not when one peer is.
    PeerRttMinMs,
    /// Committed but not yet applied Raft entries, summed over the node's replicas.
    ApplyLagEntries,
    /// Mean time from a write's proposal to its reply on this node, ms.
    ProposalMeanMs,
}

impl Signal {
    /// Every signal, in catalogue order.
    pub const ALL: [Signal; 19] = [
        Signal::EngineWriteMeanMs,
        Signal::EngineSyncMeanMs,
        Signal::EngineSyncP99Ms,
        Signal::EngineReadMeanMs,
        Signal::EngineErrorsPerSec,
        Signal::EngineWriteStalled,
        Signal::EngineStalledMs,
        Signal::EnginePendingCompactionMib,
        Signal::DiskAwaitMs,
        Signal::DiskUtilPct,
        Signal::DiskInflight,
        Signal::CpuBusyPct,
        Signal::MemAvailablePct,
        Signal::PsiCpuSomePct,
        Signal::PsiMemorySomePct,
        Signal::PsiIoSomePct,
        Signal::PeerRttMinMs,
        Signal::ApplyLagEntries,
        Signal::ProposalMeanMs,
    ];

    /// The snake_case name (the JSON key, the feature prefix).
    pub fn name(self) -> &'static str {
        match self {
            Signal::EngineWriteMeanMs => "engine_write_mean_ms",
            Signal::EngineSyncMeanMs => "engine_sync_mean_ms",
            Signal::EngineSyncP99Ms => "engine_sync_p99_ms",
            Signal::EngineReadMeanMs => "engine_read_mean_ms",
            Signal::EngineErrorsPerSec => "engine_errors_per_sec",
            Signal::EngineWriteStalled => "engine_write_stalled",
            Signal::EngineStalledMs => "engine_stalled_ms",
            Signal::EnginePendingCompactionMib => "engine_pending_compaction_mib",
            Signal::DiskAwaitMs => "disk_await_ms",
            Signal::DiskUtilPct => "disk_util_pct",
            Signal::DiskInflight => "disk_inflight",
            Signal::CpuBusyPct => "cpu_busy_pct",
            Signal::MemAvailablePct => "mem_available_pct",
            Signal::PsiCpuSomePct => "psi_cpu_some_pct",
            Signal::PsiMemorySomePct => "psi_memory_some_pct",
            Signal::PsiIoSomePct => "psi_io_some_pct",
            Signal::PeerRttMinMs => "peer_rtt_min_ms",
            Signal::ApplyLagEntries => "apply_lag_entries",
            Signal::ProposalMeanMs => "proposal_mean_ms",
        }
    }

    /// The signal named `name`.
    pub fn from_name(name: &str) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The kind of early warning this signal is evidence for.
    pub fn warning_kind(self) -> WarningKind {
        match self {
            Signal::EngineWriteMeanMs
            | Signal::EngineSyncMeanMs
            | Signal::EngineSyncP99Ms
            | Signal::EngineReadMeanMs
            | Signal::EngineWriteStalled
            | Signal::EngineStalledMs
            | Signal::EnginePendingCompactionMib
            | Signal::DiskAwaitMs
            | Signal::DiskUtilPct
            | Signal::DiskInflight
            | Signal::PsiIoSomePct
            | Signal::ApplyLagEntries
            | Signal::ProposalMeanMs => WarningKind::DiskDegradation,
            Signal::EngineErrorsPerSec => WarningKind::DiskErrors,
            Signal::CpuBusyPct | Signal::PsiCpuSomePct => WarningKind::CpuOverload,
            Signal::MemAvailablePct | Signal::PsiMemorySomePct => WarningKind::MemoryPressure,
            Signal::PeerRttMinMs => WarningKind::NetworkDegradation,
        }
    }

    /// A Raft-side consequence rather than a cause: proposal latency and apply lag rise when
    /// the disk is slow and when the links are. Their evidence joins the kind the causes in
    /// the same sample point to (the disk first), and the disk when none does.
    pub fn is_consequence(self) -> bool {
        matches!(self, Signal::ProposalMeanMs | Signal::ApplyLagEntries)
    }

    /// Which way is bad: most signals are bad high; available memory is bad low.
    pub fn bad_when_low(self) -> bool {
        matches!(self, Signal::MemAvailablePct)
    }

    /// Whether detectors see `ln(1 + x)` rather than `x`: latencies and queue lengths are
    /// heavy-tailed and change by factors, not by amounts.
    pub fn log_scale(self) -> bool {
        matches!(
            self,
            Signal::EngineWriteMeanMs
                | Signal::EngineSyncMeanMs
                | Signal::EngineSyncP99Ms
                | Signal::EngineReadMeanMs
                | Signal::EngineErrorsPerSec
                | Signal::EngineStalledMs
                | Signal::EnginePendingCompactionMib
                | Signal::DiskAwaitMs
                | Signal::DiskInflight
                | Signal::PeerRttMinMs
                | Signal::ApplyLagEntries
                | Signal::ProposalMeanMs
        )
    }

    /// The value detectors see.
    pub fn transform(self, x: f64) -> f64 {
        if self.log_scale() {
            x.max(0.0).ln_1p()
        } else {
            x
        }
    }

    /// The level (in the signal's own unit) a signal must pass before its deviation is
    /// evidence for an early warning: below it a change is real but harmless (a 0.1 ms disk
    /// that becomes a 0.6 ms disk while a compiler shares the machine), and warning on it
    /// teaches operators to ignore warnings. For [`Signal::bad_when_low`] signals the level
    /// must fall below it. Engine errors have no floor: one is evidence.
    pub fn material_level(self) -> f64 {
        match self {
            Signal::EngineWriteMeanMs | Signal::EngineReadMeanMs => 5.0,
            Signal::EngineSyncMeanMs => 20.0,
            Signal::EngineSyncP99Ms => 50.0,
            Signal::EngineErrorsPerSec => 0.0,
            Signal::EngineWriteStalled => 0.5,
            Signal::EngineStalledMs => 500.0,
            Signal::EnginePendingCompactionMib => 1024.0,
            Signal::DiskAwaitMs => 20.0,
            Signal::DiskUtilPct => 80.0,
            Signal::DiskInflight => 8.0,
            Signal::CpuBusyPct => 80.0,
            Signal::MemAvailablePct => 10.0,
            Signal::PsiCpuSomePct | Signal::PsiIoSomePct => 20.0,
            Signal::PsiMemorySomePct => 10.0,
            Signal::PeerRttMinMs => 20.0,
            Signal::ApplyLagEntries => 1000.0,
            Signal::ProposalMeanMs => 50.0,
        }
    }

    /// Whether `level` (in the signal's unit) is past [`Signal::material_level`].
    pub fn is_material(self, level: f64) -> bool {
        if self.bad_when_low() {
            level <= self.material_level()
        } else {
            level >= self.material_level()
        }
    }

    /// Smallest deviation a detector assumes, on the transformed scale: a perfectly flat
    /// signal (an idle disk, zero errors) must not make a tiny wobble look like many
    /// deviations.
    pub fn min_sd(self) -> f64 {
        match self {
            Signal::EngineWriteStalled => 0.2,
            Signal::CpuBusyPct | Signal::MemAvailablePct | Signal::DiskUtilPct => 2.0,
            Signal::PsiCpuSomePct | Signal::PsiMemorySomePct | Signal::PsiIoSomePct => 1.0,
            _ => 0.05,
        }
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One sample of a node: the signals measured at `at_ms` (a signal the node could not
/// measure is absent, not zero).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TelemetrySample {
    /// When, ms since the Unix epoch (the node's clock).
    pub at_ms: u64,
    /// Values by signal.
    pub values: BTreeMap<Signal, f64>,
}

impl TelemetrySample {
    /// The value of `signal`, if measured and finite.
    pub fn get(&self, signal: Signal) -> Option<f64> {
        self.values.get(&signal).copied().filter(|v| v.is_finite())
    }
}

/// Counters an operator pushed for a node (SMART attributes of its disk, `smart_5_raw` ...).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PushedCounters {
    /// When they were pushed, ms since the Unix epoch.
    pub at_ms: u64,
    /// Values by name.
    pub values: BTreeMap<String, f64>,
}

impl PushedCounters {
    /// Checks the limits and that every value is finite.
    pub fn validate(&self) -> Result<(), String> {
        if self.values.len() > MAX_PUSHED_COUNTERS {
            return Err(format!("{} counters; at most {MAX_PUSHED_COUNTERS}", self.values.len()));
        }
        for (k, v) in &self.values {
            if k.is_empty() || k.len() > MAX_COUNTER_NAME_BYTES {
                return Err(format!("counter name `{k}` must have 1 to {MAX_COUNTER_NAME_BYTES} bytes"));
            }
            if !v.is_finite() {
                return Err(format!("counter `{k}` is not a finite number"));
            }
        }
        Ok(())
    }
}

/// The kinds of early warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum WarningKind {
    /// The disk is getting slow: write, sync or read latency, device await or queue, I/O
    /// stalls, apply lag.
    DiskDegradation,
    /// The disk (or the engine above it) returns errors.
    DiskErrors,
    /// Requests to peers take longer.
    NetworkDegradation,
    /// The CPU is saturated.
    CpuOverload,
    /// Memory is short.
    MemoryPressure,
}

impl WarningKind {
    /// Does this kind slow (or fail) every request the node leads: its disk (on every
    /// write's path there) or its links (every write waits for a round trip to its peers)?
    /// The shard manager moves such a node's leaderships away at once.
    pub fn slows_leaders(self) -> bool {
        matches!(self, WarningKind::DiskDegradation | WarningKind::DiskErrors | WarningKind::NetworkDegradation)
    }

    /// Every kind.
    pub const ALL: [WarningKind; 5] = [
        WarningKind::DiskDegradation,
        WarningKind::DiskErrors,
        WarningKind::NetworkDegradation,
        WarningKind::CpuOverload,
        WarningKind::MemoryPressure,
    ];
}

impl std::fmt::Display for WarningKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        let mut names: Vec<&str> = Signal::ALL.iter().map(|s| s.name()).collect();
        for s in Signal::ALL {
            assert_eq!(Signal::from_name(s.name()), Some(s));
            let json = serde_json::to_string(&s).expect("json");
            assert_eq!(json, format!("\"{}\"", s.name()));
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Signal::ALL.len());
    }

    #[test]
    fn pushed_counters_have_limits() {
        let mut c = PushedCounters::default();
        c.values.insert("smart_5_raw".into(), 3.0);
        assert!(c.validate().is_ok());
        c.values.insert("x".repeat(65), 1.0);
        assert!(c.validate().is_err());
        let mut c = PushedCounters::default();
        c.values.insert("smart_5_raw".into(), f64::NAN);
        assert!(c.validate().is_err());
    }
}
