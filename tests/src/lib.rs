//! Cross-crate tests (design.md §8, tiers 2 and 3).
//!
//! - [`cluster`]: an in-process cluster of nodes on the in-memory engine and the in-memory
//!   network with filters, on paused tokio time; seeded and replayable.
//! - [`linearizability`]: a Wing–Gong/Porcupine-style checker for key-value histories.
//! - [`nemesis`]: clients plus a seeded nemesis against a cluster; the history is checked.
//!
//! The tests themselves are in `tests/tests/`, one binary.

pub mod cluster;
pub mod linearizability;
pub mod nemesis;
