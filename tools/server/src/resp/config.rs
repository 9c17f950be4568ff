//! The RESP listener's settings (`[resp]` of the node's configuration): its limits, each with
//! its unit in the name.

use serde::{Deserialize, Serialize};

/// RESP listener limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct RespConfig {
    /// Largest bulk string accepted (a key or value), in bytes.
    pub max_bulk_bytes: usize,
    /// Most arguments in one command.
    pub max_args: usize,
    /// Longest inline command line, in bytes.
    pub max_inline_bytes: usize,
    /// Connections served at once.
    pub max_connections: usize,
    /// Most keys a `SCAN` returns per call (`COUNT` is capped at this).
    pub max_scan_count: usize,
    /// Most keys `DBSIZE` counts before it gives up (it scans the keyspace).
    pub max_dbsize_keys: usize,
    /// Largest command (all its arguments), in bytes: a connection whose unfinished command
    /// passes it is answered a protocol error and closed.
    pub max_command_bytes: usize,
    /// Replies waiting to be written on one connection, in bytes: past it they are written
    /// before the next command is read (pipelined replies flow as they are produced).
    pub max_reply_buffer_bytes: usize,
    /// Commands of one connection running at once (a pipeline past it waits for the oldest).
    pub max_pipeline_commands: usize,
    /// A connection that sends nothing for this long is closed, in milliseconds.
    pub idle_timeout_ms: u64,
    /// A command must arrive whole within this long of its first byte, in milliseconds (a
    /// client trickling bytes is cut off).
    pub command_timeout_ms: u64,
    /// Commands slower than this, in microseconds, go to the slow log (SLOWLOG GET).
    pub slowlog_slower_than_us: u64,
    /// Slow commands the slow log keeps (the oldest leaves first).
    pub slowlog_max_entries: usize,
}

impl Default for RespConfig {
    fn default() -> Self {
        RespConfig {
            max_bulk_bytes: 4 << 20,
            max_args: 100_000,
            max_inline_bytes: 64 << 10,
            max_connections: 10_000,
            max_scan_count: 10_000,
            max_dbsize_keys: 10_000_000,
            max_command_bytes: 64 << 20,
            max_reply_buffer_bytes: 1 << 20,
            max_pipeline_commands: 128,
            idle_timeout_ms: 3_600_000,
            command_timeout_ms: 30_000,
            slowlog_slower_than_us: 10_000,
            slowlog_max_entries: 128,
        }
    }
}
