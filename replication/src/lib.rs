//! Multi-Raft replication on raft-rs (design.md §3, §8).
//!
//! This crate will hold the store loop that drives every shard replica of a node, the Raft
//! log storage on the engine's `Raft` key space, the transports (TCP and in-memory with
//! filters), snapshots streamed through the engine's chunked export/import, and the apply
//! path. It is built by the replication issue; until then it is empty, so that the workspace
//! has the layout of design.md §2 from the start. Only this crate may depend on raft-rs.
