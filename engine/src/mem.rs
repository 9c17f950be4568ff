//! `MemEngine`: every key space in a persistent ordered map, for fast deterministic tests.
//!
//! Snapshots are O(1) clones of the maps (`imbl::OrdMap` shares structure), so a snapshot
//! costs nothing and later writes never show through it. Nothing is durable: `sync` is
//! accepted and ignored.

use std::ops::Bound;
use std::sync::{Arc, RwLock};

use imbl::OrdMap;

use crate::engine::{check_ascending, Engine, Reader};
use crate::error::Result;
use crate::types::{
    Cf, KeyRange, KvPair, RangeStats, ScanLimit, ScanOrder, ScanPage, StorageStats, WriteBatch, WriteOp, WriteOptions,
};

type Map = OrdMap<Vec<u8>, Vec<u8>>;

/// Default limit of one write batch, in bytes (shared with the RocksDB engine's default).
pub const DEFAULT_MAX_WRITE_BATCH_BYTES: usize = 64 * 1024 * 1024;

#[derive(Clone, Default)]
struct Maps([Map; 3]);

impl Maps {
    fn cf(&self, cf: Cf) -> &Map {
        &self.0[cf.index()]
    }

    fn cf_mut(&mut self, cf: Cf) -> &mut Map {
        &mut self.0[cf.index()]
    }

    fn remove_range(&mut self, cf: Cf, range: &KeyRange) {
        let keys: Vec<Vec<u8>> = self.cf(cf).range(bounds(range)).map(|(k, _)| k.clone()).collect();
        let map = self.cf_mut(cf);
        for k in keys {
            map.remove(&k);
        }
    }
}

fn bounds(range: &KeyRange) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    (Bound::Included(range.start().to_vec()), range.end().map_or(Bound::Unbounded, |e| Bound::Excluded(e.to_vec())))
}

/// The in-memory engine. Clones share the same data.
#[derive(Clone)]
pub struct MemEngine {
    maps: Arc<RwLock<Maps>>,
    max_write_batch_bytes: usize,
}

impl Default for MemEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl MemEngine {
    /// An empty engine with the default batch limit.
    pub fn new() -> Self {
        Self::with_max_write_batch_bytes(DEFAULT_MAX_WRITE_BATCH_BYTES)
    }

    /// An empty engine refusing batches above `max_write_batch_bytes`.
    pub fn with_max_write_batch_bytes(max_write_batch_bytes: usize) -> Self {
        MemEngine { maps: Arc::new(RwLock::new(Maps::default())), max_write_batch_bytes }
    }

    fn read(&self) -> Maps {
        // A poisoned lock means a writer panicked mid-batch; batches are applied to a copy and
        // swapped in, so the data behind the lock is still consistent.
        match self.maps.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn update<T>(&self, f: impl FnOnce(&mut Maps) -> Result<T>) -> Result<T> {
        let mut guard = match self.maps.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        // Apply to a copy (O(1)) and publish only on success: all or nothing.
        let mut next = guard.clone();
        let out = f(&mut next)?;
        *guard = next;
        Ok(out)
    }
}

/// A point-in-time view of a [`MemEngine`].
#[derive(Clone)]
pub struct MemSnapshot {
    maps: Maps,
}

fn get(maps: &Maps, cf: Cf, key: &[u8]) -> Option<Vec<u8>> {
    maps.cf(cf).get(key).cloned()
}

fn scan(maps: &Maps, cf: Cf, range: &KeyRange, order: ScanOrder, limit: ScanLimit) -> Result<ScanPage> {
    limit.validate()?;
    let iter = maps.cf(cf).range(bounds(range));
    let mut iter: Box<dyn Iterator<Item = (&Vec<u8>, &Vec<u8>)>> = match order {
        ScanOrder::Forward => Box::new(iter),
        ScanOrder::Reverse => Box::new(iter.rev()),
    };
    let mut page = ScanPage::default();
    let mut bytes = 0usize;
    for (k, v) in iter.by_ref() {
        if !page.pairs.is_empty() && (page.pairs.len() >= limit.max_keys || bytes + k.len() + v.len() > limit.max_bytes)
        {
            page.more = true;
            break;
        }
        bytes += k.len() + v.len();
        page.pairs.push((k.clone(), v.clone()));
    }
    Ok(page)
}

impl Reader for MemSnapshot {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(get(&self.maps, cf, key))
    }

    fn scan(&self, cf: Cf, range: &KeyRange, order: ScanOrder, limit: ScanLimit) -> Result<ScanPage> {
        scan(&self.maps, cf, range, order, limit)
    }
}

impl Reader for MemEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(get(&self.read(), cf, key))
    }

    fn scan(&self, cf: Cf, range: &KeyRange, order: ScanOrder, limit: ScanLimit) -> Result<ScanPage> {
        scan(&self.read(), cf, range, order, limit)
    }
}

impl Engine for MemEngine {
    type Snapshot = MemSnapshot;

    fn write(&self, batch: &WriteBatch, _opts: WriteOptions) -> Result<()> {
        batch.validate(self.max_write_batch_bytes)?;
        self.update(|maps| {
            for op in batch.ops() {
                match op {
                    WriteOp::Put { cf, key, value } => {
                        maps.cf_mut(*cf).insert(key.clone(), value.clone());
                    }
                    WriteOp::Delete { cf, key } => {
                        maps.cf_mut(*cf).remove(key);
                    }
                    WriteOp::DeleteRange { cf, range } => maps.remove_range(*cf, range),
                }
            }
            Ok(())
        })
    }

    fn sync_wal(&self) -> Result<()> {
        // Every write is as durable as this engine gets once it returns.
        Ok(())
    }

    fn snapshot(&self) -> MemSnapshot {
        MemSnapshot { maps: self.read() }
    }

    fn approximate_stats(&self, cf: Cf, range: &KeyRange) -> Result<RangeStats> {
        let maps = self.read();
        let mut stats = RangeStats::default();
        for (k, v) in maps.cf(cf).range(bounds(range)) {
            stats.keys += 1;
            stats.size_bytes += (k.len() + v.len()) as u64;
        }
        Ok(stats)
    }

    fn replace_range(&self, cf: Cf, range: &KeyRange, pairs: &mut dyn Iterator<Item = Result<KvPair>>) -> Result<u64> {
        // Build the new contents aside, then swap them in under the write lock.
        let mut fresh = Map::new();
        let mut prev: Option<Vec<u8>> = None;
        for pair in pairs {
            let (k, v) = pair?;
            check_ascending(cf, range, prev.as_deref(), &k)?;
            prev = Some(k.clone());
            fresh.insert(k, v);
        }
        let count = fresh.len() as u64;
        self.update(|maps| {
            maps.remove_range(cf, range);
            let map = maps.cf_mut(cf);
            for (k, v) in fresh {
                map.insert(k, v);
            }
            Ok(count)
        })
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn storage_stats(&self) -> StorageStats {
        let maps = self.read();
        let bytes: usize = Cf::ALL.iter().flat_map(|cf| maps.cf(*cf).iter()).map(|(k, v)| k.len() + v.len()).sum();
        StorageStats { memtable_bytes: bytes as u64, ..StorageStats::default() }
    }
}
