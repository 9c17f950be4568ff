//! Plain data types of the engine API: key spaces, key ranges, write batches, scan limits.
//!
//! `Cf` (key spaces `Data`, `Raft`, `Meta` = RocksDB column families), `KeyRange` (`[start, end)`,
//! `end = None` is unbounded), `WriteBatch`/`WriteOp`, `WriteOptions { sync }`,
//! `ScanLimit`/`ScanPage`, `RangeStats`, `StorageStats`, `MAX_KEY_BYTES` (8 KiB), `MAX_VALUE_BYTES`
//! (8 MiB). `KeyRange` deserialises through its validating constructor.

use std::fmt;

use crate::error::{EngineError, Result};

/// Longest key the engine stores, in bytes. Every write checks it.
///
/// The bound makes an unbounded range end representable: a key of `MAX_KEY_BYTES + 1` bytes
/// `0xff` sorts after every storable key (see [`KeyRange::end_bound`]).
pub const MAX_KEY_BYTES: usize = 8 * 1024;

/// Longest value the engine stores, in bytes. Every write checks it, so that any pair fits in
/// one export chunk.
pub const MAX_VALUE_BYTES: usize = 8 * 1024 * 1024;

/// A key/value pair.
pub type KvPair = (Vec<u8>, Vec<u8>);

/// The key spaces (RocksDB column families) of a node's engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Cf {
    /// User keys and values.
    Data,
    /// Raft logs, hard states and apply states of all replicas on the node.
    Raft,
    /// Node-local metadata: shard descriptors, import staging, node identity.
    Meta,
}

impl Cf {
    /// Every key space, in a fixed order.
    pub const ALL: [Cf; 3] = [Cf::Data, Cf::Raft, Cf::Meta];

    /// The RocksDB column-family name.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Data => "default",
            Cf::Raft => "raft",
            Cf::Meta => "meta",
        }
    }

    /// Index into [`Cf::ALL`].
    pub fn index(self) -> usize {
        match self {
            Cf::Data => 0,
            Cf::Raft => 1,
            Cf::Meta => 2,
        }
    }

    /// Wire code used in export streams.
    pub fn code(self) -> u8 {
        self.index() as u8
    }

    /// Inverse of [`Cf::code`].
    pub fn from_code(code: u8) -> Option<Cf> {
        Cf::ALL.get(usize::from(code)).copied()
    }
}

/// A half-open key range `[start, end)`; `end == None` means "to the end of the key space".
/// Deserialising goes through [`KeyRange::new`], so a decoded range is always valid.
#[derive(Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "RawKeyRange")]
pub struct KeyRange {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl KeyRange {
    /// A range `[start, end)`. Fails unless `start < end` and both keys are within
    /// [`MAX_KEY_BYTES`].
    pub fn new(start: impl Into<Vec<u8>>, end: Option<Vec<u8>>) -> Result<Self> {
        let start = start.into();
        check_key(&start)?;
        if let Some(end) = &end {
            check_key(end)?;
            if start >= *end {
                return Err(EngineError::InvalidRange(format!("start {start:?} is not below end {end:?}")));
            }
        }
        Ok(KeyRange { start, end })
    }

    /// The whole key space.
    pub fn all() -> Self {
        KeyRange { start: Vec::new(), end: None }
    }

    /// `[start, ∞)`.
    pub fn from_start(start: impl Into<Vec<u8>>) -> Result<Self> {
        KeyRange::new(start, None)
    }

    /// Inclusive start key.
    pub fn start(&self) -> &[u8] {
        &self.start
    }

    /// Exclusive end key; `None` for unbounded.
    pub fn end(&self) -> Option<&[u8]> {
        self.end.as_deref()
    }

    /// The exclusive end as a concrete key: the end key, or a key that sorts after every
    /// storable key when the range is unbounded.
    pub fn end_bound(&self) -> Vec<u8> {
        match &self.end {
            Some(end) => end.clone(),
            None => vec![0xff; MAX_KEY_BYTES + 1],
        }
    }

    /// Does the range contain `key`?
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|end| key < end)
    }

    /// The part of this range strictly after `key` (for resuming a forward scan), or `None`
    /// when nothing is left.
    pub fn after(&self, key: &[u8]) -> Option<KeyRange> {
        // The smallest key above `key` is `key ++ [0]`; as a bound it need not be storable.
        let mut next = Vec::with_capacity(key.len() + 1);
        next.extend_from_slice(key);
        next.push(0);
        if self.end.as_deref().is_some_and(|end| next.as_slice() >= end) {
            return None;
        }
        debug_assert!(next.as_slice() > self.start.as_slice(), "resume key {next:?} before range start");
        Some(KeyRange { start: next, end: self.end.clone() })
    }

    /// The part of this range up to and including `key`: `[start, key ++ [0])`, clipped to
    /// the range end.
    pub fn through(&self, key: &[u8]) -> KeyRange {
        match self.after(key) {
            Some(rest) => KeyRange { start: self.start.clone(), end: Some(rest.start) },
            None => self.clone(),
        }
    }

    /// The part of this range strictly before `key` (for resuming a reverse scan), or `None`
    /// when nothing is left.
    pub fn before(&self, key: &[u8]) -> Option<KeyRange> {
        if key <= self.start.as_slice() {
            return None;
        }
        let end = match &self.end {
            Some(end) if end.as_slice() < key => end.clone(),
            _ => key.to_vec(),
        };
        Some(KeyRange { start: self.start.clone(), end: Some(end) })
    }
}

#[derive(serde::Deserialize)]
struct RawKeyRange {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl TryFrom<RawKeyRange> for KeyRange {
    type Error = EngineError;
    fn try_from(raw: RawKeyRange) -> Result<Self> {
        KeyRange::new(raw.start, raw.end)
    }
}

impl fmt::Debug for KeyRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for KeyRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, ", escape(&self.start))?;
        match &self.end {
            Some(end) => write!(f, "{})", escape(end)),
            None => write!(f, "∞)"),
        }
    }
}

/// Printable form of a key: ASCII as is, other bytes as `\xNN`.
pub fn escape(key: &[u8]) -> String {
    key.escape_ascii().to_string()
}

/// Fails if `key` is longer than [`MAX_KEY_BYTES`].
pub fn check_key(key: &[u8]) -> Result<()> {
    if key.len() > MAX_KEY_BYTES {
        return Err(EngineError::KeyTooLarge { len_bytes: key.len(), max_bytes: MAX_KEY_BYTES });
    }
    Ok(())
}

/// One operation of a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Set `key` to `value`.
    Put {
        /// Key space.
        cf: Cf,
        /// Key.
        key: Vec<u8>,
        /// Value.
        value: Vec<u8>,
    },
    /// Remove `key`.
    Delete {
        /// Key space.
        cf: Cf,
        /// Key.
        key: Vec<u8>,
    },
    /// Remove every key in `range`.
    DeleteRange {
        /// Key space.
        cf: Cf,
        /// Range to clear.
        range: KeyRange,
    },
}

/// An ordered list of writes applied atomically, across key spaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<WriteOp>,
    size_bytes: usize,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put.
    pub fn put(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Self {
        let (key, value) = (key.into(), value.into());
        self.size_bytes += key.len() + value.len();
        self.ops.push(WriteOp::Put { cf, key, value });
        self
    }

    /// Adds a delete.
    pub fn delete(&mut self, cf: Cf, key: impl Into<Vec<u8>>) -> &mut Self {
        let key = key.into();
        self.size_bytes += key.len();
        self.ops.push(WriteOp::Delete { cf, key });
        self
    }

    /// Adds a range delete.
    pub fn delete_range(&mut self, cf: Cf, range: KeyRange) -> &mut Self {
        self.size_bytes += range.start().len() + range.end().map_or(0, <[u8]>::len);
        self.ops.push(WriteOp::DeleteRange { cf, range });
        self
    }

    /// Adds every operation of `other`, after this batch's.
    pub fn append(&mut self, other: WriteBatch) -> &mut Self {
        self.size_bytes += other.size_bytes;
        self.ops.extend(other.ops);
        self
    }

    /// The operations in order.
    pub fn ops(&self) -> &[WriteOp] {
        &self.ops
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Sum of the key and value bytes the batch carries.
    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }

    /// Checks keys against [`MAX_KEY_BYTES`] and the batch against `max_batch_bytes`.
    pub fn validate(&self, max_batch_bytes: usize) -> Result<()> {
        if self.size_bytes > max_batch_bytes {
            return Err(EngineError::BatchTooLarge { batch_bytes: self.size_bytes, max_bytes: max_batch_bytes });
        }
        for op in &self.ops {
            match op {
                WriteOp::Put { key, value, .. } => {
                    check_key(key)?;
                    if value.len() > MAX_VALUE_BYTES {
                        return Err(EngineError::ValueTooLarge { len_bytes: value.len(), max_bytes: MAX_VALUE_BYTES });
                    }
                }
                WriteOp::Delete { key, .. } => check_key(key)?,
                WriteOp::DeleteRange { .. } => {} // checked when the range was built
            }
        }
        Ok(())
    }
}

/// Durability of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteOptions {
    /// Wait until the write is on stable storage (fsync of the WAL) before returning.
    pub sync: bool,
}

impl WriteOptions {
    /// Durable on return.
    pub const SYNC: WriteOptions = WriteOptions { sync: true };
    /// In the OS page cache on return; lost on a machine crash, kept on a process crash.
    pub const NO_SYNC: WriteOptions = WriteOptions { sync: false };
}

/// Direction of a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanOrder {
    /// Ascending keys from the range start.
    Forward,
    /// Descending keys from the range end.
    Reverse,
}

/// How much one scan call may return. A page holds at least one pair when the range holds
/// any, even if that pair alone exceeds `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanLimit {
    /// Most pairs in one page.
    pub max_keys: usize,
    /// Most key+value bytes in one page.
    pub max_bytes: usize,
}

impl ScanLimit {
    /// A limit on both counts.
    pub fn new(max_keys: usize, max_bytes: usize) -> Self {
        ScanLimit { max_keys, max_bytes }
    }

    /// Fails on a zero limit.
    pub fn validate(&self) -> Result<()> {
        if self.max_keys == 0 || self.max_bytes == 0 {
            return Err(EngineError::ZeroScanLimit);
        }
        Ok(())
    }
}

impl Default for ScanLimit {
    fn default() -> Self {
        ScanLimit { max_keys: 1024, max_bytes: 4 * 1024 * 1024 }
    }
}

/// One page of a bounded scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanPage {
    /// Pairs in scan order.
    pub pairs: Vec<KvPair>,
    /// True when the range holds more pairs past this page.
    pub more: bool,
}

impl ScanPage {
    /// The rest of `range` after this page, in scan `order`; `None` when the scan is complete.
    pub fn resume_range(&self, range: &KeyRange, order: ScanOrder) -> Option<KeyRange> {
        if !self.more {
            return None;
        }
        let (last, _) = self.pairs.last()?;
        match order {
            ScanOrder::Forward => range.after(last),
            ScanOrder::Reverse => range.before(last),
        }
    }
}

/// Approximate size of a key range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct RangeStats {
    /// Bytes the range occupies (RocksDB: flushed, compressed SST bytes; memory: key+value bytes).
    pub size_bytes: u64,
    /// Number of keys (RocksDB: estimated from the column family's key density).
    pub keys: u64,
}

/// Engine-internal health signals that the failure model reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct StorageStats {
    /// Bytes compaction must rewrite to bring every level under its target.
    pub pending_compaction_bytes: u64,
    /// Writes are being slowed down by the engine.
    pub write_delayed: bool,
    /// Writes are stopped by the engine.
    pub write_stopped: bool,
    /// Number of running compactions.
    pub running_compactions: u64,
    /// Bytes held by memtables.
    pub memtable_bytes: u64,
    /// Bytes of live SST files.
    pub sst_bytes: u64,
    /// Bytes free for the engine on its file system (`None`: not on a disk, or unknown).
    pub available_bytes: Option<u64>,
}

/// The classes of engine operations a fault can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpClass {
    /// Point reads and scans (live and snapshot).
    Read,
    /// Writes without sync.
    Write,
    /// Writes with sync (the WAL fsync path), and range replacement.
    Sync,
}

impl OpClass {
    /// Every class.
    pub const ALL: [OpClass; 3] = [OpClass::Read, OpClass::Write, OpClass::Sync];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            OpClass::Read => "read",
            OpClass::Write => "write",
            OpClass::Sync => "sync",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            OpClass::Read => 0,
            OpClass::Write => 1,
            OpClass::Sync => 2,
        }
    }
}

impl fmt::Display for OpClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deserialising_validates() {
        let ok: KeyRange = serde_json::from_str(r#"{"start":[97],"end":[98]}"#).expect("valid range");
        assert_eq!(ok, KeyRange::new(b"a".to_vec(), Some(b"b".to_vec())).expect("range"));
        assert!(serde_json::from_str::<KeyRange>(r#"{"start":[98],"end":[97]}"#).is_err(), "start after end");
        assert!(serde_json::from_str::<KeyRange>(r#"{"start":[97],"end":[97]}"#).is_err(), "empty range");
    }

    #[test]
    fn after_before_through() {
        let r = KeyRange::new(b"b".to_vec(), Some(b"d".to_vec())).expect("range");
        assert_eq!(r.after(b"c").expect("rest").start(), b"c\0");
        assert!(r.after(b"c\xff").is_some(), "c\\xff\\0 < d");
        assert_eq!(KeyRange::new(b"b".to_vec(), Some(b"c\0".to_vec())).expect("r").after(b"c"), None);
        assert_eq!(r.before(b"c").expect("rest").end(), Some(&b"c"[..]));
        assert_eq!(r.before(b"b"), None);
        assert_eq!(r.through(b"c").end(), Some(&b"c\0"[..]));
        assert_eq!(KeyRange::all().after(&[0xff; MAX_KEY_BYTES]).expect("rest").start().len(), MAX_KEY_BYTES + 1);
    }
}
