//! Presage's programs. The binaries in `src/bin` are thin: argument parsing lives there, the
//! work lives in these modules so that tests can drive it.
//!
//! - [`demo`]: `presage demo`, the cluster demo `make demo` runs.
//! - [`walkthrough`]: `presage walkthrough`, the storage engine step by step.
//! - [`engine_bench`]: `presage-bench engine`, storage-engine figures with side-by-side baselines.
//! - [`replication_bench`]: `presage-bench replication` and `idle`: replicated writes against
//!   the raw engine, and the CPU of idle shards with quiescence on and off.
//! - [`server`]: the node server: request routing and forwarding, heartbeats, the shard
//!   manager's runtime on the meta leader, operator steps.
//! - [`ycsb`]: `presage-bench run`, the YCSB core workloads against the raw engine, a
//!   playground or a running cluster, side by side.
//! - [`datagen`]: deterministic keys and values shared by both.

pub mod admin;
pub mod agent;
pub mod ctl;
pub mod datagen;
pub mod demo;
pub mod engine_bench;
pub mod metrics;
pub mod node;
pub mod pfa_cli;
pub mod pfa_record;
pub mod replication_bench;
pub mod resp;
pub mod scenario;
pub mod server;
pub mod walkthrough;
pub mod ycsb;
