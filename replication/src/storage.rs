//! `PeerStorage`: raft-rs's `Storage` for one replica, on the node's engine.
//!
//! Reads (entries, terms) go to the engine's `Raft` key space; the small states (hard state,
//! last index, apply state, membership) are cached in memory. Writes are not made here: the
//! store collects them from every replica into one engine batch (group commit), and these
//! methods only add to that batch and update the cache. A failed batch write stops the
//! node, so the cache never runs ahead of the disk for long.
//!
//! `PeerStorage`, raft-rs's `Storage` on the engine. Small states cached; writes only added to the
//! store's batch. `snapshot()` returns metadata at the applied index and keeps an engine snapshot
//! of that instant for the transfer.
//!
//! **Entry cache.** The log's tail - entries appended and not yet applied - stays in memory
//! too (a contiguous run ending at the last index), so that apply, and a leader's appends to
//! its followers, do not read the log back from the engine. Log writes are asynchronous (the
//! store's log writer), and raft-rs reads an entry from here as soon as it is handed over, so
//! an entry not yet durable is never dropped from the cache: past [`MAX_ENTRY_CACHE_BYTES`]
//! the oldest *persisted* entries go first (those are on disk). Unpersisted bytes are bounded
//! by Raft's own limits (`max_uncommitted_bytes` on a leader, `max_inflight_msgs` x
//! `max_msg_bytes` from a leader to a follower). The cache drops what is applied, compacted
//! or overwritten by a new leader, and empties on a snapshot install; a read below it goes to
//! the engine.

use std::collections::VecDeque;
use std::sync::Mutex;

use prost::Message as _;

use presage_engine::{Cf, Engine, ScanLimit, ScanOrder, WriteBatch};
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::error::{Error, Result};
use crate::keys;
use crate::wire::{self, ApplyState, RaftLocalState, ShardDescriptor, SnapshotData};

/// Index and term a freshly created shard's log starts at (both replicas of a new shard
/// start from this identical, already-committed state).
pub const RAFT_INIT_LOG_INDEX: u64 = 5;
/// See [`RAFT_INIT_LOG_INDEX`].
pub const RAFT_INIT_LOG_TERM: u64 = 5;

/// An engine snapshot taken for a Raft snapshot at `index`; the data the snapshot stream reads.
pub struct GeneratedSnapshot<S> {
    /// The Raft index the data reflects.
    pub index: u64,
    /// The engine's view at that index.
    pub data: S,
    /// The shard as of `index`.
    pub descriptor: ShardDescriptor,
}

/// Most bytes of *persisted* log entries one replica keeps in its entry cache (see the module
/// doc).
pub const MAX_ENTRY_CACHE_BYTES: usize = 4 << 20;

/// The log's tail: a contiguous run of entries appended and not yet applied.
#[derive(Default)]
struct EntryCache {
    entries: VecDeque<Entry>,
    /// Their encoded size.
    bytes: usize,
    /// The highest index known durable (the cache never drops an entry above it).
    persisted: u64,
}

impl EntryCache {
    /// Adds `entries` (which follow on from the cache, or overwrite its suffix from their
    /// first index on); then drops the oldest persisted entries past [`MAX_ENTRY_CACHE_BYTES`].
    fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        while self.entries.back().is_some_and(|e| e.index >= first.index) {
            self.pop_back();
        }
        // What a new leader overwrote is not durable in its new form.
        self.persisted = self.persisted.min(first.index - 1);
        if self.entries.back().is_some_and(|e| e.index + 1 != first.index) {
            debug_assert!(
                self.entries.back().is_some_and(|e| e.index <= self.persisted),
                "a gap behind unpersisted entries"
            );
            self.clear();
        }
        for e in entries {
            self.bytes += e.encoded_len();
            self.entries.push_back(e.clone());
        }
        self.trim();
    }

    /// Records that the log is durable up to `index` of `term` (a log write completed): taken
    /// only if the cache still holds that very entry, or none past it (a new leader may have
    /// overwritten it since the write was handed over).
    fn mark_persisted(&mut self, index: u64, term: u64) {
        let still_there = match self.term(index) {
            Some(t) => t == term,
            // Below the cache (applied or dropped: durable), or an empty cache.
            None => self.entries.front().is_none_or(|f| index < f.index),
        };
        if still_there && index > self.persisted {
            self.persisted = index;
            self.trim();
        }
    }

    /// Drops the oldest persisted entries while over the byte limit.
    fn trim(&mut self) {
        while self.bytes > MAX_ENTRY_CACHE_BYTES && self.entries.front().is_some_and(|e| e.index <= self.persisted) {
            if let Some(e) = self.entries.pop_front() {
                self.bytes -= e.encoded_len();
            }
        }
    }

    fn pop_back(&mut self) {
        if let Some(e) = self.entries.pop_back() {
            self.bytes -= e.encoded_len();
        }
    }

    /// Drops the entries up to and including `index`.
    fn drop_to(&mut self, index: u64) {
        while self.entries.front().is_some_and(|e| e.index <= index) {
            if let Some(e) = self.entries.pop_front() {
                self.bytes -= e.encoded_len();
            }
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|e| e.index)
    }

    /// Entries `[low, high)` within `max_size` bytes (at least one), if the cache holds them.
    fn slice(&self, low: u64, high: u64, max_size: u64) -> Option<Vec<Entry>> {
        let first = self.entries.front()?.index;
        let last = self.entries.back()?.index;
        if low < first || high > last + 1 || low >= high {
            return None;
        }
        let start = usize::try_from(low - first).ok()?;
        let mut out = Vec::new();
        let mut size = 0u64;
        for e in self.entries.range(start..).take_while(|e| e.index < high) {
            size += e.encoded_len() as u64;
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(e.clone());
        }
        Some(out)
    }

    fn term(&self, index: u64) -> Option<u64> {
        let first = self.entries.front()?.index;
        let at = usize::try_from(index.checked_sub(first)?).ok()?;
        self.entries.get(at).map(|e| e.term)
    }
}

/// One replica's Raft storage.
pub struct PeerStorage<E: Engine> {
    engine: E,
    shard_id: u64,
    raft_state: RaftLocalState,
    apply_state: ApplyState,
    descriptor: ShardDescriptor,
    /// Entries appended and not yet applied (see the module doc).
    cache: EntryCache,
    /// The engine snapshot behind the most recent Raft snapshot this replica generated.
    generated: Mutex<Option<GeneratedSnapshot<E::Snapshot>>>,
}

fn storage_err(e: Error) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

impl<E: Engine> PeerStorage<E> {
    /// Loads the replica of `shard_id` from the engine; `Ok(None)` if it has no state.
    pub fn load(engine: E, shard_id: u64) -> Result<Option<Self>> {
        let Some(raw) = engine.get(Cf::Raft, &keys::raft_state_key(shard_id))? else { return Ok(None) };
        let mut raft_state: RaftLocalState = wire::decode("raft local state", &raw)?;
        let apply_raw = engine
            .get(Cf::Raft, &keys::apply_state_key(shard_id))?
            .ok_or(Error::Corrupt { what: "apply state", reason: format!("shard {shard_id} has none") })?;
        let apply_state: ApplyState = wire::decode("apply state", &apply_raw)?;
        // The apply state is written apart from the hard state (unsynced, with the data), so
        // a crash can keep it and lose the newer commit index: what was applied was committed.
        if let Some(hs) = raft_state.hard_state.as_mut() {
            if hs.commit < apply_state.applied_index {
                debug_assert!(apply_state.applied_index <= raft_state.last_index, "applied past the log");
                hs.commit = apply_state.applied_index;
            }
        }
        let desc_raw = engine
            .get(Cf::Meta, &keys::descriptor_key(shard_id))?
            .ok_or(Error::Corrupt { what: "shard descriptor", reason: format!("shard {shard_id} has none") })?;
        let descriptor: ShardDescriptor = wire::decode("shard descriptor", &desc_raw)?;
        Ok(Some(PeerStorage {
            engine,
            shard_id,
            raft_state,
            apply_state,
            descriptor,
            cache: EntryCache::default(),
            generated: Mutex::new(None),
        }))
    }

    /// State for a brand-new shard whose replicas all start from the same committed point
    /// (bootstrap and split): log at [`RAFT_INIT_LOG_INDEX`], membership from `descriptor`.
    /// Adds the writes to `wb`.
    pub fn initial(engine: E, descriptor: ShardDescriptor, wb: &mut WriteBatch) -> Self {
        let hard_state = HardState { term: RAFT_INIT_LOG_TERM, vote: 0, commit: RAFT_INIT_LOG_INDEX };
        let raft_state = RaftLocalState {
            hard_state: Some(hard_state),
            last_index: RAFT_INIT_LOG_INDEX,
            last_term: RAFT_INIT_LOG_TERM,
        };
        let apply_state = ApplyState {
            applied_index: RAFT_INIT_LOG_INDEX,
            applied_term: RAFT_INIT_LOG_TERM,
            truncated_index: RAFT_INIT_LOG_INDEX,
            truncated_term: RAFT_INIT_LOG_TERM,
            conf_state: Some(descriptor.conf_state()),
        };
        let s = Self::with_state(engine, descriptor, raft_state, apply_state);
        s.write_raft_state(wb);
        s.write_apply_state(wb);
        s.write_descriptor(wb);
        s
    }

    /// State for a replica created by a message from its leader, before it has any data: an
    /// empty log and no membership; a snapshot will initialise it.
    pub fn uninitialized(engine: E, descriptor: ShardDescriptor) -> Self {
        let raft_state = RaftLocalState { hard_state: Some(HardState::default()), last_index: 0, last_term: 0 };
        Self::with_state(engine, descriptor, raft_state, ApplyState::default())
    }

    /// The replica a snapshot whose install a crash interrupted lands on (see
    /// `store::recover`): the stored one, or else an uninitialized one keeping any hard
    /// state it persisted (its vote must survive).
    pub(crate) fn for_pending_snapshot(engine: E, descriptor: ShardDescriptor) -> Result<Self> {
        let shard_id = descriptor.id;
        if engine.get(Cf::Meta, &keys::descriptor_key(shard_id))?.is_some() {
            if let Some(stored) = Self::load(engine.clone(), shard_id)? {
                return Ok(stored);
            }
        }
        let mut storage = Self::uninitialized(engine, descriptor);
        if let Some(raw) = storage.engine.get(Cf::Raft, &keys::raft_state_key(shard_id))? {
            storage.raft_state = wire::decode("raft local state", &raw)?;
        }
        Ok(storage)
    }

    fn with_state(engine: E, descriptor: ShardDescriptor, raft_state: RaftLocalState, apply_state: ApplyState) -> Self {
        PeerStorage {
            engine,
            shard_id: descriptor.id,
            raft_state,
            apply_state,
            descriptor,
            cache: EntryCache::default(),
            generated: Mutex::new(None),
        }
    }

    /// True once the replica has data (a log or a snapshot).
    pub fn is_initialized(&self) -> bool {
        self.apply_state.conf_state.as_ref().is_some_and(|c| !c.voters.is_empty())
    }

    /// The shard id.
    pub fn shard_id(&self) -> u64 {
        self.shard_id
    }

    /// The shard as this replica last applied it.
    pub fn descriptor(&self) -> &ShardDescriptor {
        &self.descriptor
    }

    /// Last applied index.
    pub fn applied_index(&self) -> u64 {
        self.apply_state.applied_index
    }

    /// First index still in the log.
    pub fn first_log_index(&self) -> u64 {
        self.apply_state.truncated_index + 1
    }

    /// Last index in the log.
    pub fn last_log_index(&self) -> u64 {
        self.raft_state.last_index
    }

    /// The engine.
    pub fn engine(&self) -> &E {
        &self.engine
    }

    fn write_raft_state(&self, wb: &mut WriteBatch) {
        wb.put(Cf::Raft, keys::raft_state_key(self.shard_id), wire::encode(&self.raft_state));
    }

    fn write_apply_state(&self, wb: &mut WriteBatch) {
        wb.put(Cf::Raft, keys::apply_state_key(self.shard_id), wire::encode(&self.apply_state));
    }

    fn write_descriptor(&self, wb: &mut WriteBatch) {
        wb.put(Cf::Meta, keys::descriptor_key(self.shard_id), wire::encode(&self.descriptor));
    }

    /// Appends `entries` (replacing any conflicting suffix) to `wb`.
    pub fn append(&mut self, entries: &[Entry], wb: &mut WriteBatch) {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else { return };
        debug_assert!(first.index > self.apply_state.truncated_index, "append below the truncated index");
        debug_assert!(first.index <= self.raft_state.last_index + 1, "append leaves a gap");
        for e in entries {
            wb.put(Cf::Raft, keys::log_key(self.shard_id, e.index), wire::encode(e));
        }
        if last.index < self.raft_state.last_index {
            // A new leader overwrote our suffix: drop what lies beyond the new last entry.
            wb.delete_range(Cf::Raft, keys::log_range(self.shard_id, last.index + 1, self.raft_state.last_index + 1));
        }
        self.raft_state.last_index = last.index;
        self.raft_state.last_term = last.term;
        self.write_raft_state(wb);
        self.cache.append(entries);
    }

    /// Records a new hard state in `wb`.
    pub fn set_hard_state(&mut self, hs: &HardState, wb: &mut WriteBatch) {
        self.raft_state.hard_state = Some(hs.clone());
        self.write_raft_state(wb);
    }

    /// Records that everything up to `index` (of `term`) is applied, with the data in `wb`.
    pub fn set_applied(&mut self, index: u64, term: u64, wb: &mut WriteBatch) {
        debug_assert!(index >= self.apply_state.applied_index, "apply went backwards");
        self.apply_state.applied_index = index;
        self.apply_state.applied_term = term;
        self.write_apply_state(wb);
        self.cache.drop_to(index);
    }

    /// Records new membership (at the current applied index) and descriptor.
    pub fn set_membership(&mut self, conf_state: ConfState, descriptor: ShardDescriptor, wb: &mut WriteBatch) {
        self.apply_state.conf_state = Some(conf_state);
        self.descriptor = descriptor;
        self.write_apply_state(wb);
        self.write_descriptor(wb);
    }

    /// Records a new descriptor (a split narrowed the range).
    pub fn set_descriptor(&mut self, descriptor: ShardDescriptor, wb: &mut WriteBatch) {
        debug_assert_eq!(descriptor.id, self.shard_id, "a replica keeps its shard id");
        self.descriptor = descriptor;
        self.write_descriptor(wb);
    }

    /// Drops log entries up to and including `index` (at most the applied index).
    pub fn compact_to(&mut self, index: u64, wb: &mut WriteBatch) -> Result<()> {
        let index = index.min(self.apply_state.applied_index);
        if index <= self.apply_state.truncated_index {
            return Ok(());
        }
        let term = self.term_of(index)?;
        wb.delete_range(Cf::Raft, keys::log_range(self.shard_id, self.apply_state.truncated_index + 1, index + 1));
        self.apply_state.truncated_index = index;
        self.apply_state.truncated_term = term;
        self.write_apply_state(wb);
        self.cache.drop_to(index);
        Ok(())
    }

    /// Installs the metadata of a received snapshot (the data was switched in by the caller
    /// in the same batch): the log restarts after the snapshot index.
    pub fn apply_snapshot_metadata(&mut self, snap: &Snapshot, descriptor: ShardDescriptor, wb: &mut WriteBatch) {
        let meta = snap.get_metadata();
        wb.delete_range(Cf::Raft, keys::log_range(self.shard_id, 0, self.raft_state.last_index.max(meta.index) + 1));
        let mut hs = self.raft_state.hard_state.clone().unwrap_or_default();
        hs.commit = hs.commit.max(meta.index);
        if meta.term > hs.term {
            // A vote belongs to its term.
            hs.term = meta.term;
            hs.vote = 0;
        }
        self.raft_state = RaftLocalState { hard_state: Some(hs), last_index: meta.index, last_term: meta.term };
        self.apply_state = ApplyState {
            applied_index: meta.index,
            applied_term: meta.term,
            truncated_index: meta.index,
            truncated_term: meta.term,
            conf_state: meta.conf_state.clone(),
        };
        self.descriptor = descriptor;
        self.cache.clear();
        self.write_raft_state(wb);
        self.write_apply_state(wb);
        self.write_descriptor(wb);
    }

    /// Adds to `wb` the removal of every trace of this replica: log, states, descriptor and
    /// the shard's data on this node, leaving a tombstone at the current `conf_ver`.
    pub fn destroy(&self, wb: &mut WriteBatch) -> Result<()> {
        destroy_metadata(&self.descriptor, wb);
        if self.is_initialized() {
            // An uninitialized replica has no data: the range may be another replica's.
            wb.delete_range(Cf::Data, self.descriptor.range()?);
        }
        Ok(())
    }

    /// Takes the engine snapshot generated for the last Raft snapshot, if it is for `index`.
    pub fn take_generated(&self, index: u64) -> Option<GeneratedSnapshot<E::Snapshot>> {
        let mut slot = self.generated.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match slot.as_ref() {
            Some(g) if g.index == index => slot.take(),
            _ => None,
        }
    }

    /// Entries `[low, high)` from the engine, within `max_size` bytes (at least one).
    fn read_log(&self, low: u64, high: u64, max_size: u64) -> raft::Result<Vec<Entry>> {
        let range = keys::log_range(self.shard_id, low, high);
        let limit = ScanLimit::new(
            usize::try_from(high - low).unwrap_or(usize::MAX),
            usize::try_from(max_size).unwrap_or(usize::MAX).max(1),
        );
        let page = self.engine.scan(Cf::Raft, &range, ScanOrder::Forward, limit).map_err(|e| storage_err(e.into()))?;
        let mut out = Vec::with_capacity(page.pairs.len());
        let mut size = 0u64;
        for (k, v) in &page.pairs {
            let e: Entry = wire::decode("raft log entry", v).map_err(|e| storage_err(e.into()))?;
            let want = low + out.len() as u64;
            if keys::index_of_log_key(k) != Some(want) || e.index != want {
                return Err(storage_err(Error::Corrupt {
                    what: "raft log",
                    reason: format!("shard {}: expected entry {want}, found {}", self.shard_id, e.index),
                }));
            }
            size += v.len() as u64;
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(e);
        }
        if out.is_empty() {
            return Err(storage_err(Error::Corrupt {
                what: "raft log",
                reason: format!("shard {}: entries [{low}, {high}) missing", self.shard_id),
            }));
        }
        Ok(out)
    }

    /// Records that this replica's log is durable up to `index` of `term` (see the module doc).
    pub fn mark_persisted(&mut self, index: u64, term: u64) {
        self.cache.mark_persisted(index, term);
    }

    fn term_of(&self, idx: u64) -> Result<u64> {
        if idx == self.apply_state.truncated_index {
            return Ok(self.apply_state.truncated_term);
        }
        if idx == self.raft_state.last_index {
            return Ok(self.raft_state.last_term);
        }
        if let Some(term) = self.cache.term(idx) {
            return Ok(term);
        }
        let raw = self.engine.get(Cf::Raft, &keys::log_key(self.shard_id, idx))?.ok_or(Error::Corrupt {
            what: "raft log",
            reason: format!("shard {} entry {idx} missing", self.shard_id),
        })?;
        let e: Entry = wire::decode("raft log entry", &raw)?;
        Ok(e.term)
    }
}

impl<E: Engine> raft::Storage for PeerStorage<E> {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.raft_state.hard_state.clone().unwrap_or_default(),
            conf_state: self.apply_state.conf_state.clone().unwrap_or_default(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _ctx: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.apply_state.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.raft_state.last_index + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        if low >= high {
            return Ok(Vec::new());
        }
        let max_size = max_size.into().unwrap_or(u64::MAX);
        if let Some(cached) = self.cache.slice(low, high, max_size) {
            return Ok(cached);
        }
        // Below the cache, from the engine (durable there: the cache keeps whatever is not);
        // the rest, if the size allows, from the cache.
        let cache_first = self.cache.first_index().filter(|f| *f > low && *f < high);
        let mut out = self.read_log(low, cache_first.unwrap_or(high), max_size)?;
        if let Some(first) = cache_first {
            let size: u64 = out.iter().map(|e| e.encoded_len() as u64).sum();
            if out.last().is_some_and(|e| e.index + 1 == first) && size < max_size {
                let rest = self.cache.slice(first, high, max_size - size).unwrap_or_default();
                let mut total = size;
                for e in rest {
                    total += e.encoded_len() as u64;
                    if total > max_size {
                        break;
                    }
                    out.push(e);
                }
            }
        }
        Ok(out)
    }
    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx < self.apply_state.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.raft_state.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        self.term_of(idx).map_err(storage_err)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.apply_state.truncated_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.raft_state.last_index)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // Applies finish before the store steps Raft again, so the engine shows exactly the
        // applied index now: the snapshot's data and its metadata agree.
        let index = self.apply_state.applied_index;
        if index < request_index {
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        let metadata = SnapshotMetadata {
            conf_state: self.apply_state.conf_state.clone(),
            index,
            term: self.apply_state.applied_term,
        };
        // Every record, or no snapshot: a receiver missing one would decide a retry differently
        // from the other replicas. (raft-rs retries a snapshot that is temporarily unavailable.)
        let requests = match crate::dedup::records(&self.engine, &Default::default(), self.shard_id, None) {
            Ok((requests, false)) => requests,
            Ok((_, true)) => {
                tracing::warn!(
                    shard = self.shard_id,
                    "too many request records to send a snapshot; waiting for the sweep"
                );
                return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
            }
            Err(e) => {
                tracing::warn!(shard = self.shard_id, error = %e, "cannot read request records for a snapshot");
                return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
            }
        };
        let data = SnapshotData { descriptor: Some(self.descriptor.clone()), requests };
        let generated = GeneratedSnapshot { index, data: self.engine.snapshot(), descriptor: self.descriptor.clone() };
        *self.generated.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(generated);
        Ok(Snapshot { data: wire::encode(&data), metadata: Some(metadata) })
    }
}

/// Adds to `wb` the removal of a replica's log, states and descriptor, leaving a tombstone at
/// its `conf_ver` so that no old message recreates it. Its data stays (a merge hands it on).
pub(crate) fn destroy_metadata(descriptor: &ShardDescriptor, wb: &mut WriteBatch) {
    let id = descriptor.id;
    wb.delete_range(Cf::Raft, keys::log_range(id, 0, u64::MAX));
    wb.delete(Cf::Raft, keys::raft_state_key(id));
    wb.delete(Cf::Raft, keys::apply_state_key(id));
    wb.delete(Cf::Meta, keys::descriptor_key(id));
    crate::dedup::clear(wb, id);
    wb.put(Cf::Meta, keys::tombstone_key(id), descriptor.epoch().conf_ver.to_be_bytes().to_vec());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(from: u64, to: u64, term: u64) -> Vec<Entry> {
        (from..=to).map(|index| Entry { index, term, data: vec![7; 10], ..Entry::default() }).collect()
    }

    #[test]
    fn the_entry_cache_follows_appends_overwrites_and_applies() {
        let mut c = EntryCache::default();
        c.append(&entries(1, 5, 1));
        assert_eq!(c.slice(2, 5, u64::MAX).map(|v| v.len()), Some(3));
        assert_eq!(c.slice(0, 3, u64::MAX), None, "below the cache: read from the engine");
        assert_eq!(c.slice(4, 7, u64::MAX), None, "past the cache");
        // A new leader overwrites from 4 on.
        c.append(&entries(4, 6, 2));
        assert_eq!(c.term(3), Some(1));
        assert_eq!(c.term(4), Some(2));
        assert_eq!(c.slice(1, 7, u64::MAX).map(|v| v.len()), Some(6));
        // At least one entry, then as many as fit.
        let one = entries(1, 1, 1)[0].encoded_len() as u64;
        assert_eq!(c.slice(1, 7, 1).map(|v| v.len()), Some(1));
        assert_eq!(c.slice(1, 7, 2 * one).map(|v| v.len()), Some(2));
        c.drop_to(3);
        assert_eq!(c.slice(3, 5, u64::MAX), None, "applied entries are gone");
        assert_eq!(c.bytes, c.entries.iter().map(|e| e.encoded_len()).sum::<usize>());
        // A run that does not follow on (behind durable entries) replaces the cache.
        c.mark_persisted(6, 2);
        c.append(&entries(10, 11, 3));
        assert_eq!(c.term(6), None);
        assert_eq!(c.slice(10, 12, u64::MAX).map(|v| v.len()), Some(2));
        c.clear();
        assert_eq!((c.bytes, c.entries.len()), (0, 0));
    }

    /// A crash can keep an apply state (written unsynced with the data) and lose the newer
    /// commit index it went with: loading takes the applied index as committed, or raft-rs
    /// would refuse to start the replica.
    #[test]
    fn a_commit_index_behind_the_applied_index_is_raised_at_load() {
        use presage_engine::{MemEngine, WriteOptions};
        let engine = MemEngine::new();
        let hs = HardState { term: 2, vote: 1, commit: 6 };
        let raft_state = RaftLocalState { hard_state: Some(hs), last_index: 9, last_term: 2 };
        let apply = ApplyState {
            applied_index: 8,
            applied_term: 2,
            truncated_index: 5,
            truncated_term: 1,
            ..ApplyState::default()
        };
        let desc = ShardDescriptor { id: 3, ..ShardDescriptor::default() };
        let mut wb = WriteBatch::new();
        wb.put(Cf::Raft, keys::raft_state_key(3), wire::encode(&raft_state));
        wb.put(Cf::Raft, keys::apply_state_key(3), wire::encode(&apply));
        wb.put(Cf::Meta, keys::descriptor_key(3), wire::encode(&desc));
        engine.write(&wb, WriteOptions::SYNC).expect("write");
        let storage = PeerStorage::load(engine, 3).expect("load").expect("a replica");
        let state = raft::Storage::initial_state(&storage).expect("state");
        assert_eq!((state.hard_state.commit, state.hard_state.term, state.hard_state.vote), (8, 2, 1));
    }

    #[test]
    fn the_entry_cache_keeps_within_its_byte_limit_but_never_drops_what_is_not_durable() {
        let mut c = EntryCache::default();
        let big = |from: u64, to: u64, term: u64| -> Vec<Entry> {
            (from..=to)
                .map(|index| Entry { index, term, data: vec![0; MAX_ENTRY_CACHE_BYTES / 4], ..Entry::default() })
                .collect()
        };
        c.append(&big(1, 10, 1));
        assert_eq!(c.entries.len(), 10, "nothing durable yet: all kept");
        c.mark_persisted(10, 1);
        assert!(c.bytes <= MAX_ENTRY_CACHE_BYTES && c.entries.len() == 3, "{} entries", c.entries.len());
        assert_eq!(c.first_index(), Some(8), "the oldest durable entries went first");
        assert_eq!(c.slice(4, 5, u64::MAX), None, "those are read from the engine");
        // A write handed over before a new leader overwrote its entries does not make the new
        // ones durable.
        c.append(&big(11, 14, 1));
        c.append(&big(12, 13, 2));
        c.mark_persisted(14, 1);
        assert_eq!(c.persisted, 10, "the write of 11-14 proves nothing about the new 12-13");
        assert_eq!(c.term(13), Some(2));
        assert!(c.entries.iter().any(|e| e.index == 12), "unpersisted entries stay");
        c.mark_persisted(13, 2);
        assert_eq!(c.persisted, 13);
    }
}
