//! Typed errors of the storage layer.
//!
//! Every failure that crosses the `Engine` trait is an [`EngineError`]; export/import failures
//! are [`TransferError`]s, which say exactly which check a stream failed so that a sender can
//! resume or restart it.
//!
//! `EngineError`, `TransferError` (one variant per way a stream can be wrong). A node's engine is
//! `MeteredEngine<FaultyEngine<RocksEngine>>`: metrics outside, so injected latency and errors are
//! measured exactly as a degrading disk would be. Tests: `engine/tests/engine/` is the crate's one
//! integration-test binary. `conformance.rs` holds every case as a generic function and a macro
//! that instantiates all of them for `MemEngine`, `RocksEngine` and both wrapper stacks; `model.rs`
//! is the proptest model check against a `BTreeMap` (seeded, `PRESAGE_TEST_SEED` replays);
//! `transfer.rs` runs round trips, every bad-stream kind and resume-after-reopen against both
//! engines; `rocks.rs` covers durability, ingest and metrics.

use crate::types::{Cf, KeyRange};

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
    #[error("key stream for {cf:?} {range} is not strictly ascending inside the range at key {key:?}")]
    UnorderedKeys {
        /// The column family written.
        cf: Cf,
        /// The range being replaced.
        range: KeyRange,
        /// The first offending key.
        key: Vec<u8>,
    },
    /// A scan limit of zero keys or zero bytes.
    #[error("scan limit must allow at least one key and one byte")]
    ZeroScanLimit,
    /// An error injected by the fault-injection wrapper.
    #[error("injected {class} fault")]
    Injected {
        /// The operation class that was failed.
        class: crate::types::OpClass,
    },
    /// An invalid configuration value.
    #[error("invalid engine configuration: {0}")]
    Config(String),
    /// Data read back from the engine is malformed (for example a staged import chunk).
    #[error("corrupt engine data: {0}")]
    Corrupt(String),
}

impl From<rocksdb::Error> for EngineError {
    fn from(e: rocksdb::Error) -> Self {
        EngineError::Rocks(e.into_string())
    }
}

/// Why an export stream or an import was refused.
///
/// Every variant except [`TransferError::Engine`] is raised *before* anything is staged or the
/// target range is touched: the import can resume from [`crate::transfer::Importer::resume_point`].
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The chunk's bytes are damaged: bad magic, bad length, crc32 mismatch, bad compression.
    #[error("corrupt chunk{}: {reason}", seq_suffix(*.seq))]
    Corrupt {
        /// Sequence number from the chunk header, when it could be read.
        seq: Option<u64>,
        /// What check failed.
        reason: String,
    },
    /// A chunk that was already applied arrived again.
    #[error("duplicate chunk: got seq {got}, expected {expected}")]
    Duplicate {
        /// The sequence number received.
        got: u64,
        /// The next sequence number the import needs.
        expected: u64,
    },
    /// A chunk arrived ahead of its turn (a gap or a reordering).
    #[error("chunk out of order: got seq {got}, expected {expected}")]
    OutOfOrder {
        /// The sequence number received.
        got: u64,
        /// The next sequence number the import needs.
        expected: u64,
    },
    /// A chunk belongs to another export stream.
    #[error("chunk belongs to stream {got:#x}, the import is reading stream {expected:#x}")]
    StreamMismatch {
        /// Stream id of the chunk.
        got: u64,
        /// Stream id the import started with.
        expected: u64,
    },
    /// The stream describes another column family or key range than the import's target.
    #[error("stream carries {got_cf:?} {got}, the import target is {expected_cf:?} {expected}")]
    WrongRange {
        /// Target column family.
        expected_cf: Cf,
        /// Target range.
        expected: KeyRange,
        /// Column family in the stream.
        got_cf: Cf,
        /// Range in the stream.
        got: KeyRange,
    },
    /// A pair in a data chunk lies outside the target range or out of key order.
    #[error("chunk {seq}: key {key:?} is outside {range} or not after the previous key")]
    KeyOutOfRange {
        /// Chunk sequence number.
        seq: u64,
        /// The key.
        key: Vec<u8>,
        /// The target range.
        range: KeyRange,
    },
    /// The chunk kind is not what the stream needs at this point.
    #[error("chunk {seq}: unexpected {got} chunk ({why})")]
    UnexpectedKind {
        /// Chunk sequence number.
        seq: u64,
        /// The kind that arrived.
        got: &'static str,
        /// What was expected instead.
        why: &'static str,
    },
    /// The stream ended before its end chunk.
    #[error("stream truncated: end chunk not received, next expected seq {next_seq}")]
    Truncated {
        /// The chunk the import is waiting for.
        next_seq: u64,
    },
    /// The totals in the end chunk disagree with what was received.
    #[error("checksum mismatch: sender has {expected}, received {got}")]
    ChecksumMismatch {
        /// What the sender computed.
        expected: crate::checksum::RangeChecksum,
        /// What the importer computed.
        got: crate::checksum::RangeChecksum,
    },
    /// A chunk exceeds a configured size limit.
    #[error("chunk of {len_bytes} bytes exceeds the limit of {max_bytes} bytes")]
    TooLarge {
        /// Size of the chunk (or its decompressed payload).
        len_bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// A persisted import for this id targets another range.
    #[error("import {import_id} already exists for another target; abort it first")]
    ImportConflict {
        /// The import id.
        import_id: u64,
    },
    /// The engine failed while staging or switching.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

fn seq_suffix(seq: Option<u64>) -> String {
    seq.map_or_else(String::new, |s| format!(" {s}"))
}
