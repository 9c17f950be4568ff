//! `MemEngine`: every key space in a persistent ordered map, for fast deterministic tests,
//! durable exactly as far as RocksDB promises.
//!
//! Snapshots are O(1) clones of the maps (`imbl::OrdMap` shares structure), so a snapshot
//! costs nothing and later writes never show through it.
//!
//! Crash-faithful: beside the live maps the engine keeps the *durable image* (what a power
//! loss leaves) and the writes made since the last sync, in order. A synced write,
//! [`Engine::sync_wal`] and [`Engine::flush`] make everything written before them durable
//! (RocksDB's WAL is one ordered log: syncing it syncs every earlier record). An unsynced
//! write stays in the queue. [`MemEngine::crash`] models a power loss: the new engine holds the
//! durable image plus a *prefix* of the queue of the caller's choosing (the OS may have written
//! some of the log back, but never a later record without an earlier one), and the crashed
//! engine refuses every further write, so a node that is being killed cannot write after its
//! crash. [`Engine::replace_range`] is durable at once (an ingested file is synced); when an
//! unsynced write touches its range, RocksDB flushes that memtable first, which syncs the
//! log, and so does this engine; otherwise the queued writes stay unsynced, as in RocksDB.
//! The queue holds at most [`MAX_UNSYNCED_WRITES`] writes and [`MAX_UNSYNCED_BYTES`]; past
//! either the oldest reach the image (as the OS's own write-back would).

use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::{Arc, RwLock};

use imbl::OrdMap;

use crate::engine::{check_ascending, Engine, Reader};
use crate::error::{EngineError, Result};
use crate::types::{
    Cf, KeyRange, KvPair, RangeStats, ScanLimit, ScanOrder, ScanPage, StorageStats, WriteBatch, WriteOp, WriteOptions,
};

type Map = OrdMap<Vec<u8>, Vec<u8>>;

/// Default limit of one write batch, in bytes (shared with the RocksDB engine's default).
pub const DEFAULT_MAX_WRITE_BATCH_BYTES: usize = 64 * 1024 * 1024;

/// Most unsynced writes a [`MemEngine`] keeps apart from its durable image; older ones are
/// taken as written back by the OS.
pub const MAX_UNSYNCED_WRITES: usize = 4096;

/// Most bytes of unsynced writes a [`MemEngine`] keeps apart (the same write-back past it).
pub const MAX_UNSYNCED_BYTES: usize = 64 * 1024 * 1024;

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

    /// Applies a validated batch (infallible: every operation of a valid batch applies).
    fn apply(&mut self, batch: &WriteBatch) {
        for op in batch.ops() {
            match op {
                WriteOp::Put { cf, key, value } => {
                    self.cf_mut(*cf).insert(key.clone(), value.clone());
                }
                WriteOp::Delete { cf, key } => {
                    self.cf_mut(*cf).remove(key);
                }
                WriteOp::DeleteRange { cf, range } => self.remove_range(*cf, range),
            }
        }
    }

    /// Replaces `range` of `cf` with `fresh`.
    fn replace(&mut self, cf: Cf, range: &KeyRange, fresh: &Map) {
        self.remove_range(cf, range);
        let map = self.cf_mut(cf);
        for (k, v) in fresh {
            map.insert(k.clone(), v.clone());
        }
    }
}

/// Does `op` touch `range` of `cf`?
fn touches(op: &WriteOp, cf: Cf, range: &KeyRange) -> bool {
    match op {
        WriteOp::Put { cf: c, key, .. } | WriteOp::Delete { cf: c, key } => *c == cf && range.contains(key),
        WriteOp::DeleteRange { cf: c, range: r } => {
            *c == cf && r.end().is_none_or(|end| end > range.start()) && range.end().is_none_or(|end| end > r.start())
        }
    }
}

/// Everything behind the engine's lock.
#[derive(Clone, Default)]
struct State {
    /// What readers see.
    live: Maps,
    /// What a power loss leaves: every write up to the last sync.
    durable: Maps,
    /// Writes since the last sync, oldest first (at most [`MAX_UNSYNCED_WRITES`] and
    /// [`MAX_UNSYNCED_BYTES`], the newest excepted).
    unsynced: VecDeque<WriteBatch>,
    /// Bytes of `unsynced`.
    unsynced_bytes: usize,
    /// Set by [`MemEngine::crash`]: writes are refused from then on.
    crashed: bool,
}

impl State {
    fn sync(&mut self) {
        self.durable = self.live.clone();
        self.unsynced.clear();
        self.unsynced_bytes = 0;
    }

    fn queue_unsynced(&mut self, batch: &WriteBatch) {
        while self.unsynced.len() >= MAX_UNSYNCED_WRITES
            || (!self.unsynced.is_empty() && self.unsynced_bytes + batch.size_bytes() > MAX_UNSYNCED_BYTES)
        {
            let Some(oldest) = self.unsynced.pop_front() else { break };
            self.unsynced_bytes -= oldest.size_bytes();
            self.durable.apply(&oldest);
        }
        self.unsynced_bytes += batch.size_bytes();
        self.unsynced.push_back(batch.clone());
    }
}

fn bounds(range: &KeyRange) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    (Bound::Included(range.start().to_vec()), range.end().map_or(Bound::Unbounded, |e| Bound::Excluded(e.to_vec())))
}

/// The in-memory engine. Clones share the same data.
#[derive(Clone)]
pub struct MemEngine {
    state: Arc<RwLock<State>>,
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
        MemEngine { state: Arc::new(RwLock::new(State::default())), max_write_batch_bytes }
    }

    fn read(&self) -> Maps {
        // A poisoned lock means a writer panicked while it held it; batches are validated
        // before the lock is taken and applied without a fallible step, so none stops halfway.
        match self.state.read() {
            Ok(g) => g.live.clone(),
            Err(p) => p.into_inner().live.clone(),
        }
    }

    fn lock(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        match self.state.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Runs `f` on the state unless the engine crashed.
    fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> Result<T> {
        let mut guard = self.lock();
        if guard.crashed {
            return Err(EngineError::Crashed);
        }
        Ok(f(&mut guard))
    }

    /// Writes made since the last sync: what a crash may lose.
    pub fn unsynced_writes(&self) -> usize {
        match self.state.read() {
            Ok(g) => g.unsynced.len(),
            Err(p) => p.into_inner().unsynced.len(),
        }
    }

    /// A power loss: returns the engine a restart finds, holding the durable image plus the
    /// first `keep_unsynced` of the [`MemEngine::unsynced_writes`] (all of them when it is
    /// larger). This engine and its clones refuse every write from now on
    /// ([`EngineError::Crashed`]); reads and snapshots still work.
    pub fn crash(&self, keep_unsynced: usize) -> MemEngine {
        let mut guard = self.lock();
        guard.crashed = true;
        let mut recovered = guard.durable.clone();
        for batch in guard.unsynced.iter().take(keep_unsynced) {
            recovered.apply(batch);
        }
        let state = State { live: recovered.clone(), durable: recovered, ..State::default() };
        MemEngine { state: Arc::new(RwLock::new(state)), max_write_batch_bytes: self.max_write_batch_bytes }
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

    fn write(&self, batch: &WriteBatch, opts: WriteOptions) -> Result<()> {
        batch.validate(self.max_write_batch_bytes)?;
        self.update(|state| {
            state.live.apply(batch);
            if opts.sync {
                state.sync();
            } else {
                state.queue_unsynced(batch);
            }
        })
    }

    fn sync_wal(&self) -> Result<()> {
        self.update(State::sync)
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
        self.update(|state| {
            // RocksDB flushes a memtable that overlaps an ingested file, which syncs the log.
            if state.unsynced.iter().any(|b| b.ops().iter().any(|op| touches(op, cf, range))) {
                state.sync();
            }
            state.live.replace(cf, range, &fresh);
            state.durable.replace(cf, range, &fresh);
            count
        })
    }

    fn flush(&self) -> Result<()> {
        self.update(State::sync)
    }

    fn storage_stats(&self) -> StorageStats {
        let maps = self.read();
        let bytes: usize = Cf::ALL.iter().flat_map(|cf| maps.cf(*cf).iter()).map(|(k, v)| k.len() + v.len()).sum();
        StorageStats { memtable_bytes: bytes as u64, ..StorageStats::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(e: &MemEngine, key: &[u8], sync: bool) {
        let mut wb = WriteBatch::new();
        wb.put(Cf::Data, key.to_vec(), b"v".to_vec());
        e.write(&wb, WriteOptions { sync }).expect("write");
    }

    fn has(e: &MemEngine, key: &[u8]) -> bool {
        e.get(Cf::Data, key).expect("get").is_some()
    }

    #[test]
    fn a_crash_keeps_synced_writes_and_the_chosen_prefix_of_the_rest() {
        let e = MemEngine::new();
        put(&e, b"a", true);
        put(&e, b"b", false);
        put(&e, b"c", false);
        assert_eq!(e.unsynced_writes(), 2);
        let none = e.crash(0);
        assert!(has(&none, b"a") && !has(&none, b"b") && !has(&none, b"c"));
        let first = e.crash(1);
        assert!(has(&first, b"a") && has(&first, b"b") && !has(&first, b"c"));
        let all = e.crash(usize::MAX);
        assert!(has(&all, b"a") && has(&all, b"b") && has(&all, b"c"));
        assert_eq!(all.unsynced_writes(), 0);
    }

    #[test]
    fn a_sync_makes_every_earlier_write_durable() {
        for sync in [0, 1, 2] {
            let e = MemEngine::new();
            put(&e, b"a", false);
            match sync {
                0 => e.sync_wal().expect("sync"),
                1 => e.flush().expect("flush"),
                _ => put(&e, b"b", true),
            }
            assert!(has(&e.crash(0), b"a"), "sync kind {sync}");
        }
    }

    #[test]
    fn a_crashed_engine_refuses_writes_and_still_reads() {
        let e = MemEngine::new();
        put(&e, b"a", false);
        let _restarted = e.crash(0);
        let mut wb = WriteBatch::new();
        wb.put(Cf::Data, b"b".to_vec(), b"v".to_vec());
        assert!(matches!(e.clone().write(&wb, WriteOptions::SYNC), Err(EngineError::Crashed)));
        assert!(matches!(e.sync_wal(), Err(EngineError::Crashed)));
        assert!(has(&e, b"a"), "reads of the crashed engine see what it held");
    }

    #[test]
    fn replace_range_is_durable_and_syncs_only_overlapping_writes() {
        let range = KeyRange::new(b"m".to_vec(), Some(b"n".to_vec())).expect("range");
        let mut fresh = vec![Ok((b"m1".to_vec(), b"x".to_vec()))].into_iter();
        // Disjoint: the earlier unsynced write stays unsynced, the replacement is durable.
        let e = MemEngine::new();
        put(&e, b"a", false);
        e.replace_range(Cf::Data, &range, &mut fresh).expect("replace");
        let after = e.crash(0);
        assert!(!has(&after, b"a") && has(&after, b"m1"));
        // Overlapping: the log is synced first, so the earlier write survives too.
        let e = MemEngine::new();
        put(&e, b"a", false);
        put(&e, b"m0", false);
        let mut fresh = vec![Ok((b"m1".to_vec(), b"x".to_vec()))].into_iter();
        e.replace_range(Cf::Data, &range, &mut fresh).expect("replace");
        let after = e.crash(0);
        assert!(has(&after, b"a") && has(&after, b"m1") && !has(&after, b"m0"));
    }

    #[test]
    fn past_the_queue_limit_the_oldest_writes_reach_the_image() {
        let e = MemEngine::new();
        for i in 0..=MAX_UNSYNCED_WRITES {
            put(&e, format!("k{i:05}").as_bytes(), false);
        }
        assert_eq!(e.unsynced_writes(), MAX_UNSYNCED_WRITES);
        let after = e.crash(0);
        assert!(has(&after, b"k00000") && !has(&after, b"k00001"));
    }
}
