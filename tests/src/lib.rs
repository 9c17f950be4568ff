//! Cross-crate tests (design.md §8, tiers 2 and 3).
//!
//! - [`cluster`]: an in-process cluster of nodes on the in-memory engine and the in-memory
//!   network with filters, on paused tokio time; seeded and replayable.
//!
//! The tests themselves are in `tests/tests/`, one binary.

pub mod cluster;
