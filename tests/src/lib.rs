//! Cross-crate tests (design.md §8, tiers 2 and 3).
//!
//! - [`cluster`]: an in-process cluster of nodes on the in-memory engine and the in-memory
//!   network with filters, on paused tokio time; seeded and replayable.
//! - [`disks`]: the nodes' disk faults (fault injectors over the in-memory engines).
//! - [`linearizability`]: a Wing–Gong/Porcupine-style checker for key-value histories.
//! - [`sharded`]: an in-process sharded cluster of node servers (bootstrap, join, shard
//!   manager) with clients.
//! - [`sharded_nemesis`]: the nemesis on a sharded cluster, with splits, merges and moves.
//! - [`nemesis`]: clients plus a seeded nemesis against a cluster; the history is checked.
//!
//! The tests themselves are in `tests/tests/`, one binary.

pub mod cluster;
pub mod disks;
pub mod linearizability;
pub mod nemesis;
pub mod sharded;
pub mod sharded_nemesis;

/// Logs to the test's output at the level `RUST_LOG` sets (default: warnings); call it at the
/// start of a test (later calls do nothing).
pub fn init_log() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}
