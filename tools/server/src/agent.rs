//! The telemetry agent: once a second (with each heartbeat) it samples what this node sees —
//! the engine's write, sync and read latency and errors (measured on the real I/O path), how
//! long its calls have waited without one returning (a blocked disk),
//! compaction debt and write stalls, the data device's `/proc/diskstats` (await, utilisation,
//! in-flight I/Os), CPU from `/proc/stat`, memory from `/proc/meminfo`, pressure-stall
//! information where the kernel has it, and the Raft-side figures the server measures (apply
//! lag, round trip to the fastest peer, proposal latency). A signal it cannot measure in an
//! interval (no reads happened, no PSI on this kernel) is absent from the sample, never zero.

use std::path::{Path, PathBuf};
use std::time::Instant;

use presage_engine::EngineMetricsSnapshot;
use presage_pfa::procfs::{self, DiskCounters};
use presage_pfa::telemetry::{Signal, TelemetrySample};

/// Figures the server measures for the agent.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RaftSignals {
    /// Committed but unapplied entries over the node's replicas.
    pub apply_lag_entries: Option<u64>,
    /// Round trip to the fastest peer that answered, ms.
    pub peer_rtt_min_ms: Option<f64>,
    /// Mean proposal-to-reply time of the writes this node led, ms.
    pub proposal_mean_ms: Option<f64>,
}

struct Previous {
    at: Instant,
    engine: Option<EngineMetricsSnapshot>,
    disk: Option<DiskCounters>,
    cpu: Option<(u64, u64)>,
}

/// Reads the engine's metrics and storage stats.
pub type EngineProbe = Box<dyn Fn() -> EngineMetricsSnapshot + Send>;

/// Samples one node.
pub struct Agent {
    engine: Option<EngineProbe>,
    /// `(major, minor)` of the data directory's device.
    device: Option<(u32, u32)>,
    proc_root: PathBuf,
    prev: Option<Previous>,
}

impl Agent {
    /// An agent reading the engine through `engine` and the device holding `data_dir`.
    pub fn new(engine: Option<EngineProbe>, data_dir: Option<&Path>) -> Agent {
        Agent { engine, device: data_dir.and_then(device_of), proc_root: PathBuf::from("/proc"), prev: None }
    }

    fn read(&self, rel: &str) -> Option<String> {
        // `/proc` files are small; a missing one (no PSI on this kernel) is no signal.
        std::fs::read_to_string(self.proc_root.join(rel)).ok()
    }

    /// The data device's counters: its own line in `/proc/diskstats`, or (when the data
    /// directory sits on a virtual file system such as overlayfs) the busiest real disk's.
    fn disk(&self) -> Option<DiskCounters> {
        let all = procfs::parse_diskstats(&self.read("diskstats")?);
        if let Some((major, minor)) = self.device {
            if let Some(d) = all.iter().find(|d| d.major == major && d.minor == minor) {
                return Some(d.clone());
            }
        }
        all.into_iter()
            .filter(|d| !["loop", "ram", "zram", "sr", "dm-", "md"].iter().any(|p| d.name.starts_with(p)))
            .max_by_key(|d| d.io_ticks_ms)
    }

    /// One sample at `at_ms` (ms since the Unix epoch).
    pub fn sample(&mut self, at_ms: u64, raft: RaftSignals) -> TelemetrySample {
        let now = Instant::now();
        let engine = self.engine.as_ref().map(|probe| probe());
        let disk = self.disk();
        let cpu = self.read("stat").and_then(|t| procfs::parse_cpu(&t));
        let mut values = std::collections::BTreeMap::new();
        let mut put = |s: Signal, v: Option<f64>| {
            if let Some(v) = v.filter(|v| v.is_finite()) {
                values.insert(s, v);
            }
        };
        if let Some(prev) = &self.prev {
            let elapsed_ms = now.duration_since(prev.at).as_millis().max(1) as u64;
            if let (Some(e), Some(p)) = (&engine, &prev.engine) {
                let ms = |s: Option<f64>| s.map(|v| v * 1e3);
                put(Signal::EngineWriteMeanMs, ms(e.write.since(&p.write).mean_seconds()));
                let sync = e.sync.since(&p.sync);
                put(Signal::EngineSyncMeanMs, ms(sync.mean_seconds()));
                put(Signal::EngineSyncP99Ms, ms(sync.quantile_upper_bound(0.99)));
                put(Signal::EngineReadMeanMs, ms(e.read.since(&p.read).mean_seconds()));
                let errors = |s: &EngineMetricsSnapshot| s.read_errors + s.write_errors + s.sync_errors;
                let new_errors = errors(e).saturating_sub(errors(p));
                put(Signal::EngineErrorsPerSec, Some(new_errors as f64 * 1e3 / elapsed_ms as f64));
            }
            if let (Some(d), Some(p)) = (&disk, &prev.disk) {
                if d.major == p.major && d.minor == p.minor {
                    let (await_ms, util, inflight) = procfs::disk_rates(p, d, elapsed_ms);
                    put(Signal::DiskAwaitMs, await_ms);
                    put(Signal::DiskUtilPct, Some(util));
                    put(Signal::DiskInflight, Some(inflight));
                }
            }
            if let (Some(c), Some(p)) = (cpu, prev.cpu) {
                put(Signal::CpuBusyPct, procfs::cpu_busy_pct(p, c));
            }
        }
        if let Some(e) = &engine {
            put(
                Signal::EngineWriteStalled,
                Some(f64::from(u8::from(e.storage.write_stopped || e.storage.write_delayed))),
            );
            put(Signal::EngineStalledMs, Some(e.stalled_ms as f64));
            put(Signal::EnginePendingCompactionMib, Some(e.storage.pending_compaction_bytes as f64 / (1 << 20) as f64));
        }
        put(Signal::MemAvailablePct, self.read("meminfo").and_then(|t| procfs::parse_mem_available_pct(&t)));
        put(Signal::PsiCpuSomePct, self.read("pressure/cpu").and_then(|t| procfs::parse_psi_some_avg10(&t)));
        put(Signal::PsiMemorySomePct, self.read("pressure/memory").and_then(|t| procfs::parse_psi_some_avg10(&t)));
        put(Signal::PsiIoSomePct, self.read("pressure/io").and_then(|t| procfs::parse_psi_some_avg10(&t)));
        put(Signal::ApplyLagEntries, raft.apply_lag_entries.map(|v| v as f64));
        put(Signal::PeerRttMinMs, raft.peer_rtt_min_ms);
        put(Signal::ProposalMeanMs, raft.proposal_mean_ms);
        self.prev = Some(Previous { at: now, engine, disk, cpu });
        TelemetrySample { at_ms, values }
    }
}

/// `(major, minor)` of the device holding `path` (Linux `dev_t` encoding).
fn device_of(path: &Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    Some((u32::try_from(major).ok()?, u32::try_from(minor).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_machine_with_units() {
        let metrics = presage_engine::EngineMetrics::new().expect("metrics");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut agent = Agent::new(Some(Box::new(move || metrics.snapshot())), Some(dir.path()));
        let first = agent.sample(1_000, RaftSignals::default());
        // Rates need two readings: the first sample has only levels.
        assert!(first.get(Signal::CpuBusyPct).is_none());
        std::thread::sleep(std::time::Duration::from_millis(50));
        let raft = RaftSignals { apply_lag_entries: Some(3), peer_rtt_min_ms: Some(0.4), proposal_mean_ms: None };
        let s = agent.sample(2_000, raft);
        assert_eq!(s.at_ms, 2_000);
        if Path::new("/proc/stat").exists() {
            let cpu = s.get(Signal::CpuBusyPct).expect("cpu on Linux");
            assert!((0.0..=100.0).contains(&cpu), "{cpu}");
            let mem = s.get(Signal::MemAvailablePct).expect("memory on Linux");
            assert!(mem > 0.0 && mem <= 100.0, "{mem}");
        }
        assert_eq!(s.get(Signal::ApplyLagEntries), Some(3.0));
        assert_eq!(s.get(Signal::PeerRttMinMs), Some(0.4));
        assert_eq!(s.get(Signal::ProposalMeanMs), None, "unmeasured is absent");
        assert_eq!(s.get(Signal::EngineErrorsPerSec), Some(0.0));
        assert_eq!(s.get(Signal::EngineSyncMeanMs), None, "no sync happened");
    }
}
