//! The storage baselines: one bare RocksDB engine with the node's default configuration, and
//! three of them on the same disk doing each write at once — what a 3-replica cluster on one
//! machine could reach if replication cost nothing but the three synced writes.
//!
//! Every write waits for the WAL's fsync, the durability a cluster's acknowledgement has. In
//! the three-engines target each engine has one writer thread that takes every write waiting
//! for it (at most `MAX_GROUP_WRITES`), writes them as one batch with one fsync and answers
//! them all — group commit, as a Raft node's ready round does — and a write returns when all
//! three engines have synced it. Reads and scans go to the first engine.

use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

use presage_engine::{
    Cf, Engine, KeyRange, Reader, RocksConfig, RocksEngine, ScanLimit, ScanOrder, WriteBatch, WriteOptions,
};

use super::{Target, TargetError, MAX_SCAN_PAGE_BYTES};

/// A bare RocksDB engine in a temporary folder.
pub struct RawEngineTarget {
    engine: RocksEngine,
    _dir: tempfile::TempDir,
}

fn open_engine(work_dir: &Path) -> Result<(RocksEngine, tempfile::TempDir), TargetError> {
    let dir = tempfile::tempdir_in(work_dir)
        .map_err(|source| TargetError::Io { what: format!("a temporary folder in {}", work_dir.display()), source })?;
    let engine = RocksEngine::open(dir.path(), &RocksConfig::default())?;
    Ok((engine, dir))
}

fn synced_put(engine: &RocksEngine, key: &[u8], value: &[u8]) -> Result<(), TargetError> {
    let mut wb = WriteBatch::new();
    wb.put(Cf::Data, key, value);
    Ok(engine.write(&wb, WriteOptions::SYNC)?)
}

fn scan_count(engine: &RocksEngine, start: &[u8], max_keys: usize) -> Result<usize, TargetError> {
    let range = KeyRange::new(start, None)?;
    let page = engine.scan(Cf::Data, &range, ScanOrder::Forward, ScanLimit::new(max_keys, MAX_SCAN_PAGE_BYTES))?;
    Ok(page.pairs.len())
}

impl RawEngineTarget {
    /// Opens an engine in a new temporary folder under `work_dir`.
    pub fn open(work_dir: &Path) -> Result<Self, TargetError> {
        let (engine, dir) = open_engine(work_dir)?;
        Ok(RawEngineTarget { engine, _dir: dir })
    }
}

impl Target for RawEngineTarget {
    fn read(&self, key: &[u8]) -> Result<bool, TargetError> {
        Ok(self.engine.get(Cf::Data, key)?.is_some())
    }

    fn write(&self, key: &[u8], value: &[u8]) -> Result<(), TargetError> {
        synced_put(&self.engine, key, value)
    }

    fn scan(&self, start: &[u8], max_keys: usize) -> Result<usize, TargetError> {
        scan_count(&self.engine, start, max_keys)
    }
}

/// Most writes one engine's writer puts in one synced batch.
pub const MAX_GROUP_WRITES: usize = 1024;
/// Most writes waiting for one engine's writer (a client thread past it waits to queue).
pub const MAX_QUEUED_WRITES: usize = 4096;

/// One write for an engine's writer, and where to answer.
struct Queued {
    key: Vec<u8>,
    value: Vec<u8>,
    done: mpsc::SyncSender<Result<(), String>>,
}

/// One engine and its writer thread.
struct GroupWriter {
    engine: RocksEngine,
    queue: Option<mpsc::SyncSender<Queued>>,
    thread: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl GroupWriter {
    fn start(work_dir: &Path) -> Result<Self, TargetError> {
        let (engine, dir) = open_engine(work_dir)?;
        let (tx, rx) = mpsc::sync_channel::<Queued>(MAX_QUEUED_WRITES);
        let writer = engine.clone();
        let thread = std::thread::Builder::new()
            .name("three-engines-writer".into())
            .spawn(move || group_commit(&writer, &rx))
            .map_err(|source| TargetError::Io { what: "starting an engine's writer thread".into(), source })?;
        Ok(GroupWriter { engine, queue: Some(tx), thread: Some(thread), _dir: dir })
    }
}

/// The writer: every waiting write (up to `MAX_GROUP_WRITES`) in one synced batch, until the
/// queue closes.
fn group_commit(engine: &RocksEngine, rx: &mpsc::Receiver<Queued>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP_WRITES {
            match rx.try_recv() {
                Ok(q) => group.push(q),
                Err(_) => break,
            }
        }
        let mut wb = WriteBatch::new();
        for q in &mut group {
            wb.put(Cf::Data, std::mem::take(&mut q.key), std::mem::take(&mut q.value));
        }
        let result = engine.write(&wb, WriteOptions::SYNC).map_err(|e| e.to_string());
        for q in group {
            // A client that gave up is gone; nothing to tell it.
            let _ = q.done.send(result.clone());
        }
    }
}

impl Drop for GroupWriter {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Three bare engines in three temporary folders under one work folder (one disk).
pub struct ThreeEnginesTarget {
    writers: [GroupWriter; 3],
}

impl ThreeEnginesTarget {
    /// Opens three engines in new temporary folders under `work_dir`, each with its writer.
    pub fn open(work_dir: &Path) -> Result<Self, TargetError> {
        Ok(ThreeEnginesTarget {
            writers: [GroupWriter::start(work_dir)?, GroupWriter::start(work_dir)?, GroupWriter::start(work_dir)?],
        })
    }
}

fn writer_gone() -> TargetError {
    TargetError::Io {
        what: "an engine's writer".into(),
        source: std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the writer thread stopped"),
    }
}

impl Target for ThreeEnginesTarget {
    fn read(&self, key: &[u8]) -> Result<bool, TargetError> {
        Ok(self.writers[0].engine.get(Cf::Data, key)?.is_some())
    }

    fn write(&self, key: &[u8], value: &[u8]) -> Result<(), TargetError> {
        let (done, answers) = mpsc::sync_channel(self.writers.len());
        for w in &self.writers {
            let q = Queued { key: key.to_vec(), value: value.to_vec(), done: done.clone() };
            w.queue.as_ref().ok_or_else(writer_gone)?.send(q).map_err(|_| writer_gone())?;
        }
        for _ in &self.writers {
            answers.recv().map_err(|_| writer_gone())?.map_err(|reason| TargetError::Io {
                what: "a synced write".into(),
                source: std::io::Error::other(reason),
            })?;
        }
        Ok(())
    }

    fn scan(&self, start: &[u8], max_keys: usize) -> Result<usize, TargetError> {
        scan_count(&self.writers[0].engine, start, max_keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_raw_engine_reads_writes_and_scans() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = RawEngineTarget::open(dir.path()).expect("opens");
        assert!(!t.read(b"k1").expect("read"));
        for k in [b"k1", b"k2", b"k3"] {
            t.write(k, b"v").expect("write");
        }
        assert!(t.read(b"k2").expect("read"));
        assert_eq!(t.scan(b"k2", 10).expect("scan"), 2);
        assert_eq!(t.scan(b"k1", 2).expect("scan"), 2);
    }

    #[test]
    fn three_engines_write_every_record_to_all_three() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = ThreeEnginesTarget::open(dir.path()).expect("opens");
        for k in [b"k1", b"k2", b"k3"] {
            t.write(k, b"v").expect("write");
        }
        for w in &t.writers {
            assert_eq!(scan_count(&w.engine, b"k", 10).expect("scan"), 3, "each engine holds every write");
        }
        assert!(t.read(b"k3").expect("read"));
        assert_eq!(t.scan(b"k2", 10).expect("scan"), 2);
    }
}
