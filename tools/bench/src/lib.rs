//! Presage's benchmark harness as a library: every figure beside a baseline measured in the
//! same run (design.md §8).
//!
//! - [`cli`]: the `presage-bench` program.
//! - [`ycsb`]: `presage-bench run`, the YCSB core workloads against the raw engine, a
//!   playground or a running cluster, side by side.
//! - [`peers`]: `presage-bench peers`, Presage beside etcd, redis-server and the
//!   three-engines bound in one table.
//! - [`scenario`]: the failing-node story (`presage-bench scenario`, and the demo's second
//!   act).
//! - [`engine_bench`]: `presage-bench engine`, storage-engine figures.
//! - [`replication_bench`]: `presage-bench replication` and `idle`.
//! - [`pfa_record`]: `presage pfa-record`, labelled telemetry for the node failure model.
//! - [`datagen`]: deterministic keys and values shared by all of them.

pub mod cli;
pub mod datagen;
pub mod engine_bench;
pub mod peers;
pub mod pfa_record;
pub mod replication_bench;
pub mod scenario;
pub mod ycsb;
