//! The `Reader` and `Engine` traits every storage engine implements, and the range helpers
//! built on top of them (middle key, range checksum).
//!
//! The `Reader` trait (get, bounded scan; implemented by engines and snapshots) and the `Engine`
//! trait (atomic batch write, snapshot, approximate stats, atomic `replace_range`, flush, storage
//! stats). Generic helpers on any `Reader`: `for_each_pair`, `range_checksum`, `middle_key` (one
//! pass, at most 256 checkpoints).

use crate::checksum::{ChecksumBuilder, RangeChecksum};
use crate::error::Result;
use crate::types::{
    Cf, KeyRange, KvPair, RangeStats, ScanLimit, ScanOrder, ScanPage, StorageStats, WriteBatch, WriteOptions,
};

/// Point reads and bounded scans, on the live engine or on a snapshot.
pub trait Reader {
    /// The value of `key`, if any.
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Up to `limit` pairs of `range` in `order`. `more` tells whether the range holds more;
    /// continue with [`ScanPage::resume_range`].
    fn scan(&self, cf: Cf, range: &KeyRange, order: ScanOrder, limit: ScanLimit) -> Result<ScanPage>;
}

impl<R: Reader + ?Sized> Reader for &R {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        (**self).get(cf, key)
    }

    fn scan(&self, cf: Cf, range: &KeyRange, order: ScanOrder, limit: ScanLimit) -> Result<ScanPage> {
        (**self).scan(cf, range, order, limit)
    }
}

/// A node's storage engine: key spaces ([`Cf`]), atomic batches, consistent snapshots.
///
/// Implementations: [`crate::RocksEngine`] (RocksDB, the production engine) and
/// [`crate::MemEngine`] (ordered maps in memory, for deterministic cluster tests), plus the
/// wrappers [`crate::FaultyEngine`] and [`crate::MeteredEngine`]. The conformance suite in
/// `engine/tests` runs every case against each.
pub trait Engine: Reader + Clone + Send + Sync + 'static {
    /// A consistent read-only view of every key space at one point in time.
    type Snapshot: Reader + Send + Sync + 'static;

    /// Applies `batch` atomically: after a crash either every operation is visible or none.
    fn write(&self, batch: &WriteBatch, opts: WriteOptions) -> Result<()>;

    /// A snapshot of the engine as of now; later writes are not visible through it.
    fn snapshot(&self) -> Self::Snapshot;

    /// Approximate bytes and keys in `range`.
    fn approximate_stats(&self, cf: Cf, range: &KeyRange) -> Result<RangeStats>;

    /// Atomically replaces the contents of `range` with `pairs`, which must be strictly
    /// ascending and inside `range`. Readers see either the old contents or the new, never a
    /// mix; on error the range is unchanged. Returns the number of pairs written.
    fn replace_range(&self, cf: Cf, range: &KeyRange, pairs: &mut dyn Iterator<Item = Result<KvPair>>) -> Result<u64>;

    /// Makes every acknowledged write durable and visible to size estimates (RocksDB: flush
    /// the memtables; memory: nothing to do).
    fn flush(&self) -> Result<()>;

    /// Makes every write that returned before this call durable, as a synced write would,
    /// without holding back the writes other threads make meanwhile. A single writer that
    /// gathers its own groups (the Raft log writer) writes unsynced, then calls this: with
    /// RocksDB a synced write keeps the write queue while it syncs, so an unsynced write of
    /// another thread (the apply of committed entries) would wait for the disk. Writes made
    /// meanwhile may become visible before they are durable, which is why many writers that
    /// each need their own write durable use synced writes instead (those share one sync).
    fn sync_wal(&self) -> Result<()>;

    /// Compaction and write-stall signals.
    fn storage_stats(&self) -> StorageStats;
}

/// Checks a stream of pairs for [`Engine::replace_range`]: every key inside `range` and
/// strictly after `prev`.
pub(crate) fn check_ascending(cf: Cf, range: &KeyRange, prev: Option<&[u8]>, key: &[u8]) -> Result<()> {
    crate::types::check_key(key)?;
    if !range.contains(key) || prev.is_some_and(|p| key <= p) {
        return Err(crate::EngineError::UnorderedKeys {
            cf: format!("{cf:?}"),
            range: range.to_string(),
            key: key.to_vec(),
        });
    }
    Ok(())
}

/// Calls `f` on every pair of `range` in ascending order, one bounded page at a time.
pub fn for_each_pair<R: Reader + ?Sized>(
    reader: &R,
    cf: Cf,
    range: &KeyRange,
    mut f: impl FnMut(&[u8], &[u8]) -> Result<()>,
) -> Result<()> {
    let limit = ScanLimit::default();
    let mut next = Some(range.clone());
    while let Some(r) = next {
        let page = reader.scan(cf, &r, ScanOrder::Forward, limit)?;
        for (k, v) in &page.pairs {
            f(k, v)?;
        }
        next = page.resume_range(&r, ScanOrder::Forward);
    }
    Ok(())
}

/// Checksum of every pair in `range` (see [`RangeChecksum`]): equal checksums on two
/// replicas mean equal contents, up to the strength of crc32 plus exact counts.
pub fn range_checksum<R: Reader + ?Sized>(reader: &R, cf: Cf, range: &KeyRange) -> Result<RangeChecksum> {
    let mut sum = ChecksumBuilder::new();
    for_each_pair(reader, cf, range, |k, v| {
        sum.add(k, v);
        Ok(())
    })?;
    Ok(sum.finish())
}

/// Most checkpoints [`middle_key`] keeps while it scans.
const MIDDLE_KEY_MAX_CHECKPOINTS: usize = 256;

/// A key that splits `range` into two halves of about equal key+value bytes, or `None` when
/// the range holds fewer than two keys. One pass, bounded memory: it keeps at most
/// `MIDDLE_KEY_MAX_CHECKPOINTS` (bytes-so-far, key) checkpoints, halving their density when
/// full, so the answer is within `total / 128` bytes of the true middle.
pub fn middle_key<R: Reader + ?Sized>(reader: &R, cf: Cf, range: &KeyRange) -> Result<Option<Vec<u8>>> {
    let mut checkpoints: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut every = 1u64; // keep a checkpoint every `every` pairs
    let mut seen = 0u64;
    let mut total = 0u64;
    for_each_pair(reader, cf, range, |k, v| {
        // The checkpoint records the bytes *before* this key: splitting at `k` leaves them left.
        if seen.is_multiple_of(every) && checkpoints.len() == MIDDLE_KEY_MAX_CHECKPOINTS {
            // Keep every other checkpoint: the survivors sit at multiples of the doubled step.
            every *= 2;
            let mut i = 0usize;
            checkpoints.retain(|_| {
                i += 1;
                i % 2 == 1
            });
        }
        if seen.is_multiple_of(every) {
            checkpoints.push((total, k.to_vec()));
        }
        seen += 1;
        total += (k.len() + v.len()) as u64;
        Ok(())
    })?;
    if seen < 2 {
        return Ok(None);
    }
    let half = total / 2;
    // The first key can never split (the left half would be empty).
    let best = checkpoints.into_iter().skip(1).min_by_key(|(before, _)| before.abs_diff(half)).map(|(_, k)| k);
    debug_assert!(best.as_deref().is_none_or(|k| range.contains(k)), "middle key outside range");
    Ok(best)
}
