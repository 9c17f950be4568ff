//! raft-rs logs through slog; this routes its records into `tracing`.

/// A slog logger whose records become tracing events (target `raft`), tagged with `shard`
/// and `node`.
pub fn raft_logger(node_id: u64, shard_id: u64) -> slog::Logger {
    slog::Logger::root(tracing_slog::TracingSlogDrain, slog::o!("node" => node_id, "shard" => shard_id))
}
