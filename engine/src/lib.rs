//! Presage's storage layer: the engine every node keeps its shards, Raft logs and metadata in.
//!
//! - [`Engine`] / [`Reader`]: the storage API, free of RocksDB types. Three key spaces
//!   ([`Cf`]), atomic [`WriteBatch`]es across them with an explicit sync choice, point reads,
//!   bounded forward/reverse scans, consistent snapshots, delete-range, approximate range
//!   stats, a middle key for size splits ([`middle_key`]) and a range checksum
//!   ([`range_checksum`]).
//! - [`RocksEngine`] (production) and [`MemEngine`] (deterministic tests) implement it; one
//!   conformance suite (`engine/tests/engine/conformance.rs`) runs against both.
//! - [`transfer`]: range export/import as zstd-compressed, crc32-checked, size-limited chunks,
//!   staged durably and switched in atomically, resumable after interruption.
//! - [`FaultyEngine`]: latency and error injection per operation class.
//! - [`MeteredEngine`]: latency histograms and error counters on the real call path.
//!
//! Only this crate touches RocksDB.

mod checksum;
mod engine;
mod error;
pub mod fault;
mod mem;
pub mod metrics;
mod rocks;
pub mod transfer;
mod types;

pub use checksum::{ChecksumBuilder, RangeChecksum};
pub use engine::{for_each_pair, middle_key, range_checksum, Engine, Reader};
pub use error::{EngineError, Result};
pub use fault::{FaultConfig, FaultInjector, FaultRule, FaultyEngine};
pub use mem::{MemEngine, MemSnapshot, DEFAULT_MAX_WRITE_BATCH_BYTES, MAX_UNSYNCED_BYTES, MAX_UNSYNCED_WRITES};
pub use metrics::{ClassStalls, EngineMetrics, EngineMetricsSnapshot, LatencySnapshot, MeteredEngine};
pub use rocks::{RocksConfig, RocksEngine, RocksSnapshot};
pub use transfer::{ExportOptions, Exporter, ImportOptions, Importer, ResumePoint, TransferError};
pub use types::{
    check_key, escape, Cf, KeyRange, KvPair, OpClass, RangeStats, ScanLimit, ScanOrder, ScanPage, StorageStats,
    WriteBatch, WriteOp, WriteOptions, MAX_KEY_BYTES, MAX_VALUE_BYTES,
};
