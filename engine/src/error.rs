//! Typed errors of the storage layer.
//!
//! Every failure that crosses the `Engine` trait is an [`EngineError`]; export/import failures
//! are `TransferError`s (in `transfer`), which say exactly which check a stream failed so that
//! a sender can resume or restart it.
//!
//! A node's engine is
//! `MeteredEngine<FaultyEngine<RocksEngine>>`: metrics outside, so injected latency and errors are
//! measured exactly as a degrading disk would be. Tests: `engine/tests/engine/` is the crate's one
//! integration-test binary. `conformance.rs` holds every case as a generic function and a macro
//! that instantiates all of them for `MemEngine`, `RocksEngine` and both wrapper stacks; `model.rs`
//! is the proptest model check against a `BTreeMap` (seeded, `PRESAGE_TEST_SEED` replays);
//! `transfer.rs` runs round trips, every bad-stream kind and resume-after-reopen against both
//! engines; `rocks.rs` covers durability, ingest and metrics.

/// Result of an engine operation.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// An error of an engine operation.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The underlying RocksDB call failed (I/O error, corruption, ...).
    #[error("rocksdb: {0}")]
    Rocks(String),
    /// A file-system operation of the engine failed.
    #[error("{context}: {source}")]
    Io {
        /// What the engine was doing.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A key longer than [`crate::MAX_KEY_BYTES`].
    #[error("key of {len_bytes} bytes exceeds the limit of {max_bytes} bytes")]
    KeyTooLarge {
        /// Length of the offending key.
        len_bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// A value longer than [`crate::MAX_VALUE_BYTES`].
    #[error("value of {len_bytes} bytes exceeds the limit of {max_bytes} bytes")]
    ValueTooLarge {
        /// Length of the offending value.
        len_bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// A write batch larger than the engine's `max_write_batch_bytes`.
    #[error("write batch of {batch_bytes} bytes exceeds the limit of {max_bytes} bytes")]
    BatchTooLarge {
        /// Size of the batch.
        batch_bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// A key range whose start is not below its end.
    #[error("invalid key range: {0}")]
    InvalidRange(String),
    /// Keys handed to an ordered operation were not strictly ascending or left the range.
    #[error("key stream for {cf} {range} is not strictly ascending inside the range at key {key:?}")]
    UnorderedKeys {
        /// The key space written (`Data`, `Raft`, `Meta`).
        cf: String,
        /// The range being replaced, as `[start, end)`.
        range: String,
        /// The first offending key.
        key: Vec<u8>,
    },
    /// A scan limit of zero keys or zero bytes.
    #[error("scan limit must allow at least one key and one byte")]
    ZeroScanLimit,
    /// An error injected by the fault-injection wrapper.
    #[error("injected {class} fault")]
    Injected {
        /// The operation class that was failed (`read`, `write`, `sync`; `OpClass::name`).
        class: &'static str,
    },
    /// The disk is full: the write was refused (ENOSPC, or injected as such).
    #[error("no space left on the device: write refused")]
    NoSpace,
    /// An invalid configuration value.
    #[error("invalid engine configuration: {0}")]
    Config(String),
    /// The engine went through a simulated power loss ([`crate::MemEngine::crash`]); a
    /// restart opens the engine the crash returned.
    #[error("the engine crashed (simulated power loss): writes refused")]
    Crashed,
    /// Data read back from the engine is malformed (for example a staged import chunk).
    #[error("corrupt engine data: {0}")]
    Corrupt(String),
}

impl From<rocksdb::Error> for EngineError {
    fn from(e: rocksdb::Error) -> Self {
        match e.kind() {
            // RocksDB's corruption messages name the file (a WAL record, an SST block).
            rocksdb::ErrorKind::Corruption => EngineError::Corrupt(e.into_string()),
            rocksdb::ErrorKind::IOError if e.as_ref().contains("No space left on device") => EngineError::NoSpace,
            _ => EngineError::Rocks(e.into_string()),
        }
    }
}
