//! The node's Prometheus metrics: requests per protocol and command (count by result,
//! latency histogram), open connections, and gauges read when `/metrics` is scraped
//! (replicas, leaders, the shard manager's counts, splits and merges carried out, Raft
//! transport counters). The storage engine's own registry is rendered alongside.

use std::sync::Arc;
use std::time::{Duration, Instant};

use presage_client::net::Handler;
use presage_client::{Request, Response};
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

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
    /// The node's own disk check is handing its leaderships away.
    pub self_check_shedding: bool,
    /// Leadership transfers the disk check started since the node started.
    pub self_check_transfers: u64,
}

/// A node's metrics.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    /// Open connections per protocol.
    pub connections: IntGaugeVec,
    node: IntGaugeVec,
    manager: IntGaugeVec,
    is_manager: IntGauge,
    /// Foreground latencies since the last [`Metrics::take_foreground_window`], in microseconds.
    foreground_us: std::sync::Mutex<hdrhistogram::Histogram<u64>>,
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

impl Metrics {
    /// A fresh registry with every metric defined.
    pub fn new() -> Arc<Self> {
        let registry = Registry::new_custom(Some("presage".into()), None).unwrap_or_default();
        let requests = must(IntCounterVec::new(
            Opts::new("requests_total", "Requests served, by protocol, command and result"),
            &["protocol", "command", "result"],
        ));
        let buckets: Vec<f64> = (0..20).map(|i| 25e-6 * 2f64.powi(i)).collect();
        let latency = must(HistogramVec::new(
            HistogramOpts::new("request_duration_seconds", "Time to serve a request").buckets(buckets),
            &["protocol", "command"],
        ));
        let connections = must(IntGaugeVec::new(Opts::new("connections", "Open client connections"), &["protocol"]));
        let node = must(IntGaugeVec::new(
            Opts::new("node", "This node's replicas, leaders and carried-out shard changes"),
            &["what"],
        ));
        let manager = must(IntGaugeVec::new(
            Opts::new("shard_manager", "The shard manager's counts (on the node running it)"),
            &["what"],
        ));
        let is_manager = must(IntGauge::new("is_shard_manager", "1 while this node runs the shard manager"));
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(connections.clone()),
            Box::new(node.clone()),
            Box::new(manager.clone()),
            Box::new(is_manager.clone()),
        ] {
            must(registry.register(c));
        }
        // Three significant digits over 1 µs..60 s: a fixed, small footprint (tens of KiB).
        let foreground = hdrhistogram::Histogram::new_with_bounds(1, FOREGROUND_MAX_US, 3)
            .unwrap_or_else(|e| panic!("histogram bounds are constants: {e}"));
        Arc::new(Metrics {
            registry,
            requests,
            latency,
            connections,
            node,
            manager,
            is_manager,
            foreground_us: std::sync::Mutex::new(foreground),
        })
    }

    /// Counts one request.
    pub fn observe(&self, protocol: &str, command: &str, ok: bool, elapsed: Duration) {
        let result = if ok { "ok" } else { "error" };
        self.requests.with_label_values(&[protocol, command, result]).inc();
        self.latency.with_label_values(&[protocol, command]).observe(elapsed.as_secs_f64());
        if is_foreground(protocol, command) {
            let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX).clamp(1, FOREGROUND_MAX_US);
            let mut h = self.foreground_us.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            // In bounds by the clamp above.
            let _ = h.record(us);
        }
    }

    /// The foreground requests since the last call: how many, and their p99 in microseconds.
    pub fn take_foreground_window(&self) -> (u64, u64) {
        let mut h = self.foreground_us.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
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

    /// Sets the scrape-time gauges.
    pub fn set_gauges(&self, g: &NodeGauges) {
        let set = |vec: &IntGaugeVec, what: &str, v: u64| vec.with_label_values(&[what]).set(v as i64);
        set(&self.node, "replicas", g.replicas);
        set(&self.node, "leaders", g.leaders);
        set(&self.node, "quiescent", g.quiescent);
        set(&self.node, "splits", g.splits);
        set(&self.node, "merges", g.merges);
        set(&self.node, "raft_frames_sent", g.raft_frames_sent);
        set(&self.node, "raft_frames_received", g.raft_frames_received);
        set(&self.node, "raft_frames_rejected", g.raft_frames_rejected);
        set(&self.node, "raft_envelopes_dropped", g.raft_envelopes_dropped);
        set(&self.node, "snapshot_rate_bytes_per_sec", g.snapshot_rate_bytes_per_sec);
        set(&self.node, "snapshot_bytes_sent", g.snapshot_bytes_sent);
        set(&self.node, "self_check_shedding", u64::from(g.self_check_shedding));
        set(&self.node, "self_check_transfers", g.self_check_transfers);
        self.is_manager.set(i64::from(g.manager.is_some()));
        if let Some(m) = &g.manager {
            set(&self.manager, "nodes", m.nodes as u64);
            set(&self.manager, "nodes_up", m.nodes_up as u64);
            set(&self.manager, "groups", m.groups as u64);
            set(&self.manager, "shards", m.shards as u64);
            set(&self.manager, "running_operators", m.running_operators as u64);
            set(&self.manager, "finished_operators", m.finished_operators as u64);
        }
    }

    /// The text exposition of this registry and of `others`.
    pub fn render(&self, others: &[&Registry]) -> String {
        let mut families = self.registry.gather();
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
