//! Cross-crate tests (design.md §8, tiers 2 and 3): in-process clusters on the in-memory
//! engine and transport, the nemesis with a linearizability checker, and multi-process
//! end-to-end runs of the real binaries.
//!
//! The clusters arrive with the replication issue. Single-crate tests live beside their
//! crate (`engine/tests`, `tools/tests`), one test binary per crate.
