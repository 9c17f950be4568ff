//! `RocksEngine`: the production engine on RocksDB, one column family per [`Cf`].
//!
//! - Writes go through one RocksDB `WriteBatch` per [`WriteBatch`], with the caller's sync choice.
//! - Snapshots own an `Arc` of the database, so they outlive the handle that made them.
//! - [`Engine::replace_range`] writes one SST file holding a range tombstone over the target
//!   plus the new pairs and ingests it: RocksDB assigns the whole file one sequence number, the
//!   tombstone hides only older versions, and ingestion is atomic, so readers see the old range
//!   or the new one and a crash leaves one of the two.
//! - Damage is an error, never silent loss: the WAL is recovered tolerating only a torn last
//!   record (what a crash mid-write leaves); a damaged record before it fails the open with
//!   [`EngineError::Corrupt`] naming the file (RocksDB names it only in its info log, so the
//!   open reads the log's tail); an SST block whose checksum fails is a `Corrupt` error on
//!   read, naming the file (block checksums are verified on every read). ENOSPC is
//!   [`EngineError::NoSpace`].
//! - Range sizes come from RocksDB's approximate sizes (flushed SST bytes, compressed); key
//!   counts are scaled from the column family's estimated key density.
//!
//! `RocksEngine`. One column family per `Cf`; snapshots own an `Arc<DB>` (self-referential via
//! `self_cell`); `replace_range` writes one SST holding a range tombstone plus the new pairs and
//! ingests it (atomic: one file, one sequence number, the tombstone hides only older versions).
//! `RocksConfig` (kebab-case serde).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, DBRecoveryMode,
    IngestExternalFileOptions, Options, ReadOptions, SstFileWriter, DB,
};
use self_cell::self_cell;

use crate::engine::{check_ascending, Engine, Reader};
use crate::error::{EngineError, Result};
use crate::types::{
    Cf, KeyRange, KvPair, RangeStats, ScanLimit, ScanOrder, ScanPage, StorageStats, WriteBatch, WriteOp, WriteOptions,
};

/// Settings of the RocksDB engine.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct RocksConfig {
    /// Shared block cache, in bytes.
    pub block_cache_bytes: usize,
    /// Size of one memtable, in bytes.
    pub write_buffer_bytes: usize,
    /// Background flush + compaction threads.
    pub max_background_jobs: i32,
    /// Largest write batch accepted, in bytes of keys and values.
    pub max_write_batch_bytes: usize,
}

impl Default for RocksConfig {
    fn default() -> Self {
        RocksConfig {
            block_cache_bytes: 256 * 1024 * 1024,
            write_buffer_bytes: 64 * 1024 * 1024,
            max_background_jobs: 2,
            max_write_batch_bytes: crate::mem::DEFAULT_MAX_WRITE_BATCH_BYTES,
        }
    }
}

impl RocksConfig {
    /// Fails on a value RocksDB cannot work with.
    pub fn validate(&self) -> Result<()> {
        if self.write_buffer_bytes < 64 * 1024 {
            return Err(EngineError::Config(format!("write-buffer-bytes {} is below 64KiB", self.write_buffer_bytes)));
        }
        if self.max_background_jobs < 1 {
            return Err(EngineError::Config("max-background-jobs must be at least 1".into()));
        }
        if self.max_write_batch_bytes == 0 {
            return Err(EngineError::Config("max-write-batch-bytes must be positive".into()));
        }
        Ok(())
    }
}

/// Bytes an unprivileged writer may still use on the file system holding `path`.
fn available_bytes(path: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    Some(st.blocks_available().saturating_mul(st.fragment_size()))
}

/// Most bytes of RocksDB's info log read back to find the file a corruption is in.
const MAX_INFO_LOG_TAIL_BYTES: u64 = 64 * 1024;

/// Most damaged files named in one error.
const MAX_NAMED_FILES: usize = 8;

/// RocksDB names the damaged file of a failed open (a WAL record, a MANIFEST) in its info
/// log, not in the error it returns: add the names the log's last lines give.
fn name_damaged_files(db_dir: &Path, err: EngineError) -> EngineError {
    let EngineError::Corrupt(msg) = err else { return err };
    let files = damaged_files_in_info_log(&db_dir.join("LOG"));
    if files.is_empty() {
        return EngineError::Corrupt(format!("{msg} (in {})", db_dir.display()));
    }
    EngineError::Corrupt(format!("{msg} in {}", files.join(", ")))
}

/// Paths that the corruption lines of the tail of `log` name.
fn damaged_files_in_info_log(log: &Path) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(log) else { return Vec::new() };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if file.seek(SeekFrom::Start(len.saturating_sub(MAX_INFO_LOG_TAIL_BYTES))).is_err() {
        return Vec::new();
    }
    let mut tail = Vec::new();
    if file.take(MAX_INFO_LOG_TAIL_BYTES).read_to_end(&mut tail).is_err() {
        return Vec::new();
    }
    let mut files: Vec<String> = Vec::new();
    for line in String::from_utf8_lossy(&tail).lines().filter(|l| l.contains("Corruption")) {
        for token in line.split_whitespace() {
            let path = token.trim_end_matches([':', ',', ';']);
            let named = path.ends_with(".log") || path.ends_with(".sst") || path.contains("MANIFEST-");
            if named && !files.iter().any(|f| f == path) && files.len() < MAX_NAMED_FILES {
                files.push(path.to_string());
            }
        }
    }
    files
}

type SnapshotOf<'a> = rocksdb::Snapshot<'a>;

self_cell!(
    struct OwnedSnapshot {
        owner: Arc<DB>,
        #[covariant]
        dependent: SnapshotOf,
    }
);

/// A point-in-time view of a [`RocksEngine`]; keeps the database open while it lives.
pub struct RocksSnapshot {
    inner: OwnedSnapshot,
}

/// The RocksDB engine. Clones share one database.
#[derive(Clone)]
pub struct RocksEngine {
    db: Arc<DB>,
    ingest_dir: Arc<PathBuf>,
    max_write_batch_bytes: usize,
    next_ingest_file: Arc<AtomicU64>,
}

impl RocksEngine {
    /// Opens (creating if missing) an engine under `dir`: RocksDB in `dir/db`, temporary
    /// ingest files in `dir/ingest`.
    pub fn open(dir: &Path, config: &RocksConfig) -> Result<Self> {
        config.validate()?;
        let db_dir = dir.join("db");
        let ingest_dir = dir.join("ingest");
        let cache = Cache::new_lru_cache(config.block_cache_bytes);
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(config.max_background_jobs);
        db_opts.set_bytes_per_sync(1024 * 1024);
        // A torn last record is what a crash leaves; anything else damaged in the WAL is an
        // error at open, not a silent stop at the damage (the default, point-in-time recovery,
        // would drop every later synced record without a word).
        db_opts.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
        db_opts.set_paranoid_checks(true);
        let cfs = Cf::ALL.iter().map(|cf| ColumnFamilyDescriptor::new(cf.name(), cf_options(*cf, config, &cache)));
        // Opening takes RocksDB's LOCK file, so a second process on the same folder fails here,
        // before it could touch the running engine's files below.
        let db = DB::open_cf_descriptors(&db_opts, &db_dir, cfs)
            .map_err(|e| name_damaged_files(&db_dir, EngineError::from(e)))?;
        // Leftover ingest files belong to replace_range calls that never finished.
        if ingest_dir.exists() {
            std::fs::remove_dir_all(&ingest_dir)
                .map_err(|source| EngineError::Io { context: format!("clearing {}", ingest_dir.display()), source })?;
        }
        std::fs::create_dir_all(&ingest_dir)
            .map_err(|source| EngineError::Io { context: format!("creating {}", ingest_dir.display()), source })?;

        Ok(RocksEngine {
            db: Arc::new(db),
            ingest_dir: Arc::new(ingest_dir),
            max_write_batch_bytes: config.max_write_batch_bytes,
            next_ingest_file: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Compacts `range` of `cf` down to the bottom level.
    pub fn compact_range(&self, cf: Cf, range: &KeyRange) -> Result<()> {
        self.db.compact_range_cf(handle(&self.db, cf)?, Some(range.start()), range.end());
        Ok(())
    }

    fn int_property(&self, cf: Option<Cf>, name: &str) -> u64 {
        let value = match cf {
            Some(cf) => handle(&self.db, cf).and_then(|h| Ok(self.db.property_int_value_cf(h, name)?)),
            None => self.db.property_int_value(name).map_err(EngineError::from),
        };
        match value {
            Ok(v) => v.unwrap_or(0),
            Err(e) => {
                tracing::warn!(property = name, error = %e, "reading a RocksDB property failed");
                0
            }
        }
    }
}

fn cf_options(cf: Cf, config: &RocksConfig, cache: &Cache) -> Options {
    let mut opts = Options::default();
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_bloom_filter(10.0, false);
    table.set_cache_index_and_filter_blocks(true);
    opts.set_block_based_table_factory(&table);
    opts.set_write_buffer_size(config.write_buffer_bytes);
    match cf {
        // Raft logs are written once, read rarely and deleted soon: cheap compression.
        Cf::Raft => opts.set_compression_type(DBCompressionType::Lz4),
        Cf::Data | Cf::Meta => {
            opts.set_compression_type(DBCompressionType::Lz4);
            opts.set_bottommost_compression_type(DBCompressionType::Zstd);
        }
    }
    opts
}

fn handle(db: &DB, cf: Cf) -> Result<&ColumnFamily> {
    db.cf_handle(cf.name()).ok_or_else(|| EngineError::Rocks(format!("column family {} is missing", cf.name())))
}

fn read_options(range: &KeyRange) -> ReadOptions {
    let mut ro = ReadOptions::default();
    ro.set_iterate_lower_bound(range.start().to_vec());
    if let Some(end) = range.end() {
        ro.set_iterate_upper_bound(end.to_vec());
    }
    ro
}

fn fill_page(
    mut it: rocksdb::DBRawIterator<'_>,
    range: &KeyRange,
    order: ScanOrder,
    limit: ScanLimit,
) -> Result<ScanPage> {
    limit.validate()?;
    match order {
        ScanOrder::Forward => it.seek(range.start()),
        ScanOrder::Reverse => it.seek_to_last(),
    }
    let mut page = ScanPage::default();
    let mut bytes = 0usize;
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        if !page.pairs.is_empty() && (page.pairs.len() >= limit.max_keys || bytes + k.len() + v.len() > limit.max_bytes)
        {
            page.more = true;
            break;
        }
        bytes += k.len() + v.len();
        page.pairs.push((k.to_vec(), v.to_vec()));
        match order {
            ScanOrder::Forward => it.next(),
            ScanOrder::Reverse => it.prev(),
        }
    }
    it.status()?;
    Ok(page)
}

impl Reader for RocksEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(handle(&self.db, cf)?, key)?)
    }

    fn scan(&self, cf: Cf, range: &KeyRange, order: ScanOrder, limit: ScanLimit) -> Result<ScanPage> {
        let it = self.db.raw_iterator_cf_opt(handle(&self.db, cf)?, read_options(range));
        fill_page(it, range, order, limit)
    }
}

impl Reader for RocksSnapshot {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let db = self.inner.borrow_owner();
        Ok(self.inner.borrow_dependent().get_cf(handle(db, cf)?, key)?)
    }

    fn scan(&self, cf: Cf, range: &KeyRange, order: ScanOrder, limit: ScanLimit) -> Result<ScanPage> {
        let db = self.inner.borrow_owner();
        let it = self.inner.borrow_dependent().raw_iterator_cf_opt(handle(db, cf)?, read_options(range));
        fill_page(it, range, order, limit)
    }
}

impl Engine for RocksEngine {
    type Snapshot = RocksSnapshot;

    fn write(&self, batch: &WriteBatch, opts: WriteOptions) -> Result<()> {
        batch.validate(self.max_write_batch_bytes)?;
        let mut wb = rocksdb::WriteBatch::default();
        for op in batch.ops() {
            match op {
                WriteOp::Put { cf, key, value } => wb.put_cf(handle(&self.db, *cf)?, key, value),
                WriteOp::Delete { cf, key } => wb.delete_cf(handle(&self.db, *cf)?, key),
                WriteOp::DeleteRange { cf, range } => {
                    wb.delete_range_cf(handle(&self.db, *cf)?, range.start(), &range.end_bound())
                }
            }
        }
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(opts.sync);
        self.db.write_opt(wb, &wo)?;
        Ok(())
    }

    fn sync_wal(&self) -> Result<()> {
        // FlushWAL(sync): with automatic WAL flushing this is SyncWAL, which syncs every WAL
        // file written so far (and their directory) outside the write queue.
        self.db.flush_wal(true)?;
        Ok(())
    }

    fn snapshot(&self) -> RocksSnapshot {
        RocksSnapshot { inner: OwnedSnapshot::new(Arc::clone(&self.db), |db| db.snapshot()) }
    }

    fn approximate_stats(&self, cf: Cf, range: &KeyRange) -> Result<RangeStats> {
        let h = handle(&self.db, cf)?;
        let end = range.end_bound();
        let size_bytes = self
            .db
            .get_approximate_sizes_cf(h, &[rocksdb::Range::new(range.start(), &end)])
            .first()
            .copied()
            .unwrap_or(0);
        let cf_sst_bytes = self.int_property(Some(cf), "rocksdb.total-sst-files-size");
        let cf_keys = self.int_property(Some(cf), "rocksdb.estimate-num-keys");
        let keys = if cf_sst_bytes == 0 {
            0
        } else {
            // Scale the column family's key count by the range's share of its bytes.
            let scaled = u128::from(cf_keys) * u128::from(size_bytes.min(cf_sst_bytes)) / u128::from(cf_sst_bytes);
            u64::try_from(scaled).unwrap_or(u64::MAX)
        };
        Ok(RangeStats { size_bytes, keys })
    }

    fn replace_range(&self, cf: Cf, range: &KeyRange, pairs: &mut dyn Iterator<Item = Result<KvPair>>) -> Result<u64> {
        let n = self.next_ingest_file.fetch_add(1, Ordering::Relaxed);
        let path = self.ingest_dir.join(format!("replace-{n}.sst"));
        let result = self.write_and_ingest(cf, range, pairs, &path);
        if result.is_err() && path.exists() {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "removing a failed ingest file");
            }
        }
        result
    }

    fn flush(&self) -> Result<()> {
        for cf in Cf::ALL {
            self.db.flush_cf(handle(&self.db, cf)?)?;
        }
        Ok(())
    }

    fn storage_stats(&self) -> StorageStats {
        let sum = |name: &str| Cf::ALL.iter().map(|cf| self.int_property(Some(*cf), name)).sum::<u64>();
        StorageStats {
            pending_compaction_bytes: sum("rocksdb.estimate-pending-compaction-bytes"),
            write_delayed: self.int_property(None, "rocksdb.actual-delayed-write-rate") > 0,
            write_stopped: self.int_property(None, "rocksdb.is-write-stopped") > 0,
            running_compactions: self.int_property(None, "rocksdb.num-running-compactions"),
            memtable_bytes: sum("rocksdb.cur-size-all-mem-tables"),
            sst_bytes: sum("rocksdb.total-sst-files-size"),
            available_bytes: available_bytes(&self.ingest_dir),
        }
    }
}

impl RocksEngine {
    fn write_and_ingest(
        &self,
        cf: Cf,
        range: &KeyRange,
        pairs: &mut dyn Iterator<Item = Result<KvPair>>,
        path: &Path,
    ) -> Result<u64> {
        let opts = Options::default();
        let mut writer = SstFileWriter::create(&opts);
        writer.open(path)?;
        // The tombstone hides every older version in the range; the pairs below share the
        // file's sequence number and so stay visible.
        writer.delete_range(range.start(), &range.end_bound())?;
        let mut count = 0u64;
        let mut prev: Option<Vec<u8>> = None;
        for pair in pairs {
            let (k, v) = pair?;
            check_ascending(cf, range, prev.as_deref(), &k)?;
            writer.put(&k, &v)?;
            prev = Some(k);
            count += 1;
        }
        writer.finish()?;
        let mut io = IngestExternalFileOptions::default();
        io.set_move_files(true);
        self.db.ingest_external_file_cf_opts(handle(&self.db, cf)?, &io, vec![path])?;
        Ok(count)
    }
}
