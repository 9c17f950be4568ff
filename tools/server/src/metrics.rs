//! The node's Prometheus metrics: one metric per quantity, its unit in the name, counters
//! ending in `_total` (so that `rate()` and `sum()` mean what they say).
//!
//! | Metrics | What |
//! |---|---|
//! | `presage_requests_total{protocol,command,result}`, `presage_request_duration_seconds{protocol,command}`, `presage_connections{protocol}` | requests served |
//! | `presage_replicas`, `presage_leaders`, `presage_quiescent_replicas`, `presage_splits_total`, `presage_merges_total`, `presage_replica_reads_total` | this node's replicas (the last: reads it served as a follower) |
//! | `presage_raft_frames_{sent,received,rejected}_total`, `presage_raft_envelopes_dropped_total` | the Raft transport |
//! | `presage_snapshot_rate_limit_bytes_per_second`, `presage_snapshot_sent_bytes_total` | shard copies (migration) |
//! | `presage_self_check_shedding`, `presage_self_check_transfers_total` | the node's own disk check |
//! | `presage_rocksdb_{write_delayed,write_stopped,running_compactions,pending_compaction_bytes,memtable_bytes,sst_bytes}` | RocksDB's write stalls and background work |
//! | `presage_is_shard_manager`, `presage_manager_{nodes,nodes_up,groups,shards,running_operators,finished_operators}` | the shard manager (the counts only on the node running it) |
//! | `presage_node_failure_probability{node,region}`, `presage_region_failure_probability{region}`, `presage_warnings_active{kind}` | failure prediction (on the shard manager's node) |
//! | `presage_admission_shed_total{priority}`, `presage_admission_limit_requests{priority}`, `presage_admission_target_latency_seconds` | admission by priority |
//! | `presage_consistency_checks_total{result}`, `presage_consistency_inconsistent_shards` | replicas checked against each other (`server::consistency`) |
//! | `presage_disk_available_bytes`, `presage_disk_writes_refused` | free space against the reserve (`server::disk_space`) |
//! | `presage_build_info{version}` | always 1 |
//! | `process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds`, ... | the process (prometheus's process collector) |
//!
//! The storage engine's registry (`presage_engine_*`) and the replication layer's
//! (`presage_raft_commit_seconds`, `presage_raft_ready_round_seconds`) are rendered alongside. Values read when
//! `/metrics` is scraped come in a [`NodeGauges`]; the counters among them are raised to the
//! value read (their sources only grow within a process).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use presage_client::net::Handler;
use presage_client::{Request, Response};
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Scrape-time values of one node.
#[derive(Debug, Clone, Default)]
pub struct NodeGauges {
    /// Replicas on the node.
    pub replicas: u64,
    /// Replicas leading their shard.
    pub leaders: u64,
    /// Replicas asleep (quiescent).
    pub quiescent: u64,
    /// Splits this node carried out as a leader.
    pub splits: u64,
    /// Merges this node carried out as a leader.
    pub merges: u64,
    /// The shard manager's counts, when this node runs it.
    pub manager: Option<presage_shardmgr::ManagerStats>,
    /// Failure prediction, when this node runs the shard manager.
    pub risk: Option<RiskGauges>,
    /// The storage engine's write stalls and background work.
    pub storage: presage_engine::StorageStats,
    /// Raft transport: frames sent, received, rejected; envelopes dropped.
    pub raft_frames_sent: u64,
    /// See above.
    pub raft_frames_received: u64,
    /// See above.
    pub raft_frames_rejected: u64,
    /// See above.
    pub raft_envelopes_dropped: u64,
    /// The migration bandwidth budget now (lowered when foreground p99 rises).
    pub snapshot_rate_bytes_per_sec: u64,
    /// Snapshot data sent since the node started.
    pub snapshot_bytes_sent: u64,
    /// Reads this node served as a follower (replica reads) since it started.
    pub replica_reads_served: u64,
    /// The node's own disk check is handing its leaderships away.
    pub self_check_shedding: bool,
    /// Leadership transfers the disk check started since the node started.
    pub self_check_transfers: u64,
    /// Admission by priority, per priority (critical, normal, bulk): the limit in force and
    /// the requests shed since start.
    pub admission_limits: [u64; 3],
    /// Requests shed since start, per priority.
    pub admission_shed: [u64; 3],
    /// The admission target in force, µs.
    pub admission_target_us: u64,
    /// Consistency checks since start by result: consistent, mismatch, incomplete.
    pub consistency_checks: [u64; 3],
    /// Shards whose last complete consistency check found replicas that differ.
    pub inconsistent_shards: u64,
    /// Client writes are refused for want of disk space.
    pub disk_writes_refused: bool,
}

/// The `result` labels of `presage_consistency_checks_total`, in [`NodeGauges::consistency_checks`]'s order.
pub const CONSISTENCY_RESULTS: [&str; 3] = ["consistent", "mismatch", "incomplete"];

/// What the shard manager predicts, as gauges.
#[derive(Debug, Clone, Default)]
pub struct RiskGauges {
    /// (node, region, P(failure within the horizon)) of each node with a probability.
    pub nodes: Vec<(u64, String, f64)>,
    /// (region, P(the region fails)) of each region with a probability.
    pub regions: Vec<(String, f64)>,
    /// (warning kind, active warnings of that kind), every kind listed.
    pub warnings: Vec<(String, u64)>,
}

/// The scrape-time metrics (see [`NodeGauges`]).
struct ScrapeMetrics {
    replicas: IntGauge,
    leaders: IntGauge,
    quiescent: IntGauge,
    splits: IntCounter,
    merges: IntCounter,
    raft_frames_sent: IntCounter,
    raft_frames_received: IntCounter,
    raft_frames_rejected: IntCounter,
    raft_envelopes_dropped: IntCounter,
    snapshot_rate: IntGauge,
    snapshot_bytes_sent: IntCounter,
    replica_reads_served: IntCounter,
    self_check_shedding: IntGauge,
    self_check_transfers: IntCounter,
    admission_shed: IntCounterVec,
    admission_limit: IntGaugeVec,
    admission_target: prometheus::Gauge,
    consistency_checks: IntCounterVec,
    inconsistent_shards: IntGauge,
    disk_writes_refused: IntGauge,
    disk_available: IntGauge,
    is_manager: IntGauge,
    /// Nodes, nodes up, groups, shards, running and finished operators.
    manager: [IntGaugeVec; 6],
    /// Write delayed, write stopped, running compactions, pending compaction bytes, memtable
    /// bytes, SST bytes.
    storage: [IntGauge; 6],
    node_risk: GaugeVec,
    region_risk: GaugeVec,
    warnings: IntGaugeVec,
}

/// A node's metrics.
pub struct Metrics {
    registry: Registry,
    /// Metrics named by their own standard (the process collector's `process_*`).
    unprefixed: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    /// Open connections per protocol.
    pub connections: IntGaugeVec,
    /// Held while a scrape sets its values, so that two scrapes raise a counter once.
    scrape: Mutex<ScrapeMetrics>,
    /// Foreground latencies since the last [`Metrics::take_foreground_window`], in microseconds.
    foreground_us: Mutex<hdrhistogram::Histogram<u64>>,
}

/// Longest latency the foreground window records, in microseconds (longer ones are clamped).
pub const FOREGROUND_MAX_US: u64 = 60_000_000;

/// True for requests that carry client data (the latency the migration bandwidth budget
/// protects), false for control traffic (routes, heartbeats, admin, pings).
pub fn is_foreground(protocol: &str, command: &str) -> bool {
    match protocol {
        "native" => matches!(command, "get" | "get_many" | "put" | "delete" | "scan" | "batch"),
        "resp" => !matches!(
            command,
            "ping" | "hello" | "auth" | "command" | "quit" | "client" | "select" | "info" | "unknown"
        ),
        _ => false,
    }
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Only fails on a malformed metric definition or a duplicate name, both fixed strings
    // here: a programming error caught by every test that builds a node.
    r.unwrap_or_else(|e| panic!("metric definition: {e}"))
}

/// Registers `c` in `registry` and returns it.
fn add<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    must(registry.register(Box::new(c.clone())));
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    add(registry, must(IntGauge::new(name, help)))
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    add(registry, must(IntCounter::new(name, help)))
}

/// Raises `counter` to `value` (a source that only grows; a lower value changes nothing).
fn raise_to(counter: &IntCounter, value: u64) {
    let now = counter.get();
    if value > now {
        counter.inc_by(value - now);
    }
}

impl ScrapeMetrics {
    fn new(r: &Registry) -> Self {
        ScrapeMetrics {
            replicas: gauge(r, "replicas", "Replicas on this node"),
            leaders: gauge(r, "leaders", "Replicas on this node that lead their shard"),
            quiescent: gauge(r, "quiescent_replicas", "Replicas on this node whose group sleeps"),
            splits: counter(r, "splits_total", "Splits this node carried out as a leader"),
            merges: counter(r, "merges_total", "Merges this node carried out as a leader"),
            raft_frames_sent: counter(r, "raft_frames_sent_total", "Raft transport frames sent"),
            raft_frames_received: counter(r, "raft_frames_received_total", "Raft transport frames received"),
            raft_frames_rejected: counter(
                r,
                "raft_frames_rejected_total",
                "Raft transport frames refused (too large, bad crc, undecodable, wrong sender)",
            ),
            raft_envelopes_dropped: counter(
                r,
                "raft_envelopes_dropped_total",
                "Raft messages dropped before sending (queue full, link down, unknown node)",
            ),
            snapshot_rate: gauge(
                r,
                "snapshot_rate_limit_bytes_per_second",
                "The shard-copy bandwidth budget now (lowered while foreground p99 rises)",
            ),
            snapshot_bytes_sent: counter(r, "snapshot_sent_bytes_total", "Shard-copy bytes sent"),
            replica_reads_served: counter(
                r,
                "replica_reads_total",
                "Reads served by a follower replica (replica reads)",
            ),
            self_check_shedding: gauge(
                r,
                "self_check_shedding",
                "1 while the node's own disk check hands its leaderships away",
            ),
            self_check_transfers: counter(
                r,
                "self_check_transfers_total",
                "Leadership transfers the node's own disk check started",
            ),
            admission_shed: add(
                r,
                must(IntCounterVec::new(
                    Opts::new("admission_shed_total", "Data requests refused as Overloaded, by priority"),
                    &["priority"],
                )),
            ),
            admission_limit: add(
                r,
                must(IntGaugeVec::new(
                    Opts::new("admission_limit_requests", "Requests of each priority admitted in flight at most now"),
                    &["priority"],
                )),
            ),
            admission_target: add(
                r,
                must(prometheus::Gauge::new(
                    "admission_target_latency_seconds",
                    "The 90th-percentile latency above which the node sheds bulk, then normal requests",
                )),
            ),
            consistency_checks: add(
                r,
                must(IntCounterVec::new(
                    Opts::new(
                        "consistency_checks_total",
                        "Checks of a led shard's replicas against each other, by result",
                    ),
                    &["result"],
                )),
            ),
            inconsistent_shards: gauge(
                r,
                "consistency_inconsistent_shards",
                "Shards led here whose replicas held different data at the last complete check",
            ),
            disk_writes_refused: gauge(
                r,
                "disk_writes_refused",
                "1 while the node refuses client writes: its disk has less free space than reserve-space-bytes",
            ),
            disk_available: gauge(r, "disk_available_bytes", "Bytes free on the engine's file system"),
            is_manager: gauge(r, "is_shard_manager", "1 while this node runs the shard manager"),
            manager: [
                ("manager_nodes", "Nodes the shard manager knows"),
                ("manager_nodes_up", "Nodes the shard manager hears heartbeats from"),
                ("manager_groups", "Replication groups"),
                ("manager_shards", "Shards"),
                ("manager_running_operators", "Operators (moves, transfers, splits, merges) running"),
                ("manager_finished_operators", "Finished operators the shard manager still keeps"),
            ]
            .map(|(name, help)| {
                // No labels: a vector so that the value can be absent where the manager does not run.
                add(
                    r,
                    must(IntGaugeVec::new(
                        Opts::new(name, format!("{help} (on the node running the shard manager)")),
                        &[],
                    )),
                )
            }),
            storage: [
                ("rocksdb_write_delayed", "1 while RocksDB slows writes down (a write stall starting)"),
                ("rocksdb_write_stopped", "1 while RocksDB stops writes until compaction or flushes catch up"),
                ("rocksdb_running_compactions", "Compactions running"),
                ("rocksdb_pending_compaction_bytes", "Bytes compaction has to rewrite (RocksDB's estimate)"),
                ("rocksdb_memtable_bytes", "Bytes held by memtables"),
                ("rocksdb_sst_bytes", "Bytes of live SST files"),
            ]
            .map(|(name, help)| gauge(r, name, help)),
            node_risk: add(
                r,
                must(GaugeVec::new(
                    Opts::new(
                        "node_failure_probability",
                        "P(the node fails within the prediction horizon), on the shard manager's node",
                    ),
                    &["node", "region"],
                )),
            ),
            region_risk: add(
                r,
                must(GaugeVec::new(
                    Opts::new(
                        "region_failure_probability",
                        "P(at least two of the region's nodes fail within the horizon), on the shard manager's node",
                    ),
                    &["region"],
                )),
            ),
            warnings: add(
                r,
                must(IntGaugeVec::new(
                    Opts::new("warnings_active", "Active early warnings by kind, on the shard manager's node"),
                    &["kind"],
                )),
            ),
        }
    }

    fn set(&self, g: &NodeGauges) {
        let gauge = |m: &IntGauge, v: u64| m.set(i64::try_from(v).unwrap_or(i64::MAX));
        gauge(&self.replicas, g.replicas);
        gauge(&self.leaders, g.leaders);
        gauge(&self.quiescent, g.quiescent);
        raise_to(&self.splits, g.splits);
        raise_to(&self.merges, g.merges);
        raise_to(&self.raft_frames_sent, g.raft_frames_sent);
        raise_to(&self.raft_frames_received, g.raft_frames_received);
        raise_to(&self.raft_frames_rejected, g.raft_frames_rejected);
        raise_to(&self.raft_envelopes_dropped, g.raft_envelopes_dropped);
        gauge(&self.snapshot_rate, g.snapshot_rate_bytes_per_sec);
        raise_to(&self.snapshot_bytes_sent, g.snapshot_bytes_sent);
        raise_to(&self.replica_reads_served, g.replica_reads_served);
        gauge(&self.self_check_shedding, u64::from(g.self_check_shedding));
        raise_to(&self.self_check_transfers, g.self_check_transfers);
        for p in presage_client::Priority::ALL {
            let i = p.index();
            raise_to(&self.admission_shed.with_label_values(&[p.as_str()]), g.admission_shed[i]);
            gauge(&self.admission_limit.with_label_values(&[p.as_str()]), g.admission_limits[i]);
        }
        self.admission_target.set(g.admission_target_us as f64 / 1e6);
        for (i, result) in CONSISTENCY_RESULTS.iter().enumerate() {
            raise_to(&self.consistency_checks.with_label_values(&[result]), g.consistency_checks[i]);
        }
        gauge(&self.inconsistent_shards, g.inconsistent_shards);
        gauge(&self.disk_writes_refused, u64::from(g.disk_writes_refused));
        gauge(&self.disk_available, g.storage.available_bytes.unwrap_or(0));
        gauge(&self.is_manager, u64::from(g.manager.is_some()));
        let st = &g.storage;
        let storage = [
            u64::from(st.write_delayed),
            u64::from(st.write_stopped),
            st.running_compactions,
            st.pending_compaction_bytes,
            st.memtable_bytes,
            st.sst_bytes,
        ];
        for (m, v) in self.storage.iter().zip(storage) {
            gauge(m, v);
        }
        // Only the node running the manager has these: elsewhere they are absent, not 0.
        for family in &self.manager {
            family.reset();
        }
        if let Some(m) = &g.manager {
            let values = [m.nodes, m.nodes_up, m.groups, m.shards, m.running_operators, m.finished_operators];
            for (family, v) in self.manager.iter().zip(values) {
                gauge(&family.with_label_values(&[] as &[&str]), v as u64);
            }
        }
        self.node_risk.reset();
        self.region_risk.reset();
        self.warnings.reset();
        if let Some(risk) = &g.risk {
            for (node, region, p) in &risk.nodes {
                self.node_risk.with_label_values(&[&node.to_string(), region]).set(*p);
            }
            for (region, p) in &risk.regions {
                self.region_risk.with_label_values(&[region]).set(*p);
            }
            for (kind, n) in &risk.warnings {
                gauge(&self.warnings.with_label_values(&[kind]), *n);
            }
        }
    }
}

impl Metrics {
    /// A fresh registry with every metric defined.
    pub fn new() -> Arc<Self> {
        let registry = Registry::new_custom(Some("presage".into()), None).unwrap_or_default();
        let requests = add(
            &registry,
            must(IntCounterVec::new(
                Opts::new("requests_total", "Requests served, by protocol, command and result"),
                &["protocol", "command", "result"],
            )),
        );
        let latency = add(
            &registry,
            must(HistogramVec::new(
                HistogramOpts::new("request_duration_seconds", "Time to serve a request")
                    .buckets(presage_replication::metrics::latency_buckets()),
                &["protocol", "command"],
            )),
        );
        let connections =
            add(&registry, must(IntGaugeVec::new(Opts::new("connections", "Open client connections"), &["protocol"])));
        let build = add(
            &registry,
            must(IntGaugeVec::new(Opts::new("build_info", "Always 1; the build's version as a label"), &["version"])),
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let scrape = ScrapeMetrics::new(&registry);
        let unprefixed = Registry::new();
        #[cfg(target_os = "linux")]
        must(unprefixed.register(Box::new(prometheus::process_collector::ProcessCollector::for_self())));
        // Three significant digits over 1 µs..60 s: a fixed, small footprint (tens of KiB).
        let foreground = hdrhistogram::Histogram::new_with_bounds(1, FOREGROUND_MAX_US, 3)
            .unwrap_or_else(|e| panic!("histogram bounds are constants: {e}"));
        Arc::new(Metrics {
            registry,
            unprefixed,
            requests,
            latency,
            connections,
            scrape: Mutex::new(scrape),
            foreground_us: Mutex::new(foreground),
        })
    }

    /// Counts one request.
    pub fn observe(&self, protocol: &str, command: &str, ok: bool, elapsed: Duration) {
        let result = if ok { "ok" } else { "error" };
        self.requests.with_label_values(&[protocol, command, result]).inc();
        self.latency.with_label_values(&[protocol, command]).observe(elapsed.as_secs_f64());
        if is_foreground(protocol, command) {
            let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX).clamp(1, FOREGROUND_MAX_US);
            let mut h = self.foreground_us.lock().unwrap_or_else(PoisonError::into_inner);
            // In bounds by the clamp above.
            let _ = h.record(us);
        }
    }

    /// The foreground requests since the last call: how many, and their p99 in microseconds.
    pub fn take_foreground_window(&self) -> (u64, u64) {
        let mut h = self.foreground_us.lock().unwrap_or_else(PoisonError::into_inner);
        let window = (h.len(), h.value_at_quantile(0.99));
        h.reset();
        window
    }

    /// `handler`, counting every request it serves under `protocol` (`native` for
    /// applications, `peer` for the control plane between nodes).
    pub fn native_handler(self: &Arc<Self>, handler: Handler, protocol: &'static str) -> Handler {
        let metrics = Arc::clone(self);
        Arc::new(move |caller, request: Request| {
            let (metrics, handler) = (Arc::clone(&metrics), Arc::clone(&handler));
            Box::pin(async move {
                let command = command_name(&request);
                let started = Instant::now();
                let answer = handler(caller, request).await;
                metrics.observe(protocol, command, !matches!(answer, Response::Error(_)), started.elapsed());
                answer
            })
        })
    }

    /// Sets the scrape-time values.
    pub fn set_gauges(&self, g: &NodeGauges) {
        self.scrape.lock().unwrap_or_else(PoisonError::into_inner).set(g);
    }

    /// The text exposition of this registry and of `others`.
    pub fn render(&self, others: &[&Registry]) -> String {
        // Not while another scrape sets its values (it empties the manager's and the
        // predictions' families before setting them again).
        let scrape = self.scrape.lock().unwrap_or_else(PoisonError::into_inner);
        let mut families = self.registry.gather();
        drop(scrape);
        families.extend(self.unprefixed.gather());
        for r in others {
            families.extend(r.gather());
        }
        let mut out = Vec::new();
        if let Err(e) = prometheus::TextEncoder::new().encode(&families, &mut out) {
            return format!("# metrics could not be encoded: {e}\n");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// The metric label of a native request.
pub fn command_name(request: &Request) -> &'static str {
    match request {
        Request::Forwarded { request } => command_name(request),
        other => other.name(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn scrape_values_become_gauges_and_counters_with_their_types() {
        let m = Metrics::new();
        let mut g = NodeGauges { replicas: 5, leaders: 2, splits: 3, raft_frames_sent: 10, ..NodeGauges::default() };
        m.set_gauges(&g);
        g.raft_frames_sent = 25;
        m.set_gauges(&g);
        m.set_gauges(&g);
        let text = m.render(&[]);
        assert_eq!(sample(&text, "presage_replicas"), Some(5.0));
        assert_eq!(sample(&text, "presage_leaders"), Some(2.0));
        assert_eq!(sample(&text, "presage_splits_total"), Some(3.0));
        assert_eq!(sample(&text, "presage_raft_frames_sent_total"), Some(25.0), "raised to the value, once");
        assert!(text.contains("# TYPE presage_raft_frames_sent_total counter"), "{text}");
        assert!(text.contains("# TYPE presage_replicas gauge"), "{text}");
        assert_eq!(sample(&text, "presage_is_shard_manager"), Some(0.0));
        assert_eq!(sample(&text, "presage_rocksdb_write_stopped"), Some(0.0));
        let storage = presage_engine::StorageStats { write_stopped: true, sst_bytes: 4096, ..Default::default() };
        m.set_gauges(&NodeGauges { storage, ..g.clone() });
        let text = m.render(&[]);
        assert_eq!(sample(&text, "presage_rocksdb_write_stopped"), Some(1.0));
        assert_eq!(sample(&text, "presage_rocksdb_sst_bytes"), Some(4096.0));
        assert!(!text.contains("presage_manager_shards "), "absent where the manager does not run: {text}");
        let stats = presage_shardmgr::ManagerStats { shards: 7, nodes_up: 3, ..Default::default() };
        m.set_gauges(&NodeGauges { manager: Some(stats), ..g.clone() });
        let text = m.render(&[]);
        assert_eq!(sample(&text, "presage_manager_shards"), Some(7.0));
        assert_eq!(sample(&text, "presage_manager_nodes_up"), Some(3.0));
        assert_eq!(sample(&text, "presage_is_shard_manager"), Some(1.0));
        assert!(text.contains(&format!("presage_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))));
        #[cfg(target_os = "linux")]
        assert!(sample(&text, "process_resident_memory_bytes").is_some_and(|b| b > 0.0), "{text}");
    }

    #[test]
    fn failure_risk_and_warnings_are_gauges_that_follow_the_last_scrape() {
        let m = Metrics::new();
        let risk = RiskGauges {
            nodes: vec![(1, "r1".into(), 0.25), (2, "r2".into(), 0.5)],
            regions: vec![("r1".into(), 0.25)],
            warnings: vec![("disk-latency".into(), 1), ("errors".into(), 0)],
        };
        m.set_gauges(&NodeGauges { risk: Some(risk), ..NodeGauges::default() });
        let text = m.render(&[]);
        assert_eq!(sample(&text, "presage_node_failure_probability{node=\"2\",region=\"r2\"}"), Some(0.5));
        assert_eq!(sample(&text, "presage_region_failure_probability{region=\"r1\"}"), Some(0.25));
        assert_eq!(sample(&text, "presage_warnings_active{kind=\"disk-latency\"}"), Some(1.0));
        assert_eq!(sample(&text, "presage_warnings_active{kind=\"errors\"}"), Some(0.0));
        // The manager moved away: its predictions are no longer this node's to report.
        m.set_gauges(&NodeGauges::default());
        let text = m.render(&[]);
        assert!(!text.contains("presage_node_failure_probability{"), "{text}");
    }
}
