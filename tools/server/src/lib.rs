//! Presage's node server as a library (design.md §3, §7, §10): everything a `presage start`
//! process runs.
//!
//! - [`node`]: the node process: start-up (data dir, RocksDB, the replication node behind
//!   the peer port, the listeners), its configuration, the peer port, trust material.
//! - [`server`]: the request server: data requests routed and forwarded, heartbeats, the
//!   shard manager's runtime on the meta leader, operator steps, the failure analysis.
//! - [`resp`]: RESP for Redis clients.
//! - [`admin`]: the HTTP admin API and Prometheus `/metrics`.
//! - [`agent`]: the telemetry agent.
//! - [`metrics`]: the node's Prometheus registry.
//! - [`host_fault`]: CPU contention and memory pressure injected into the node process.

pub mod admin;
pub mod agent;
pub mod host_fault;
pub mod metrics;
pub mod node;
pub mod resp;
pub mod server;
