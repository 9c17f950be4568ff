//! Damaged files found at open or on read: a torn WAL tail is tolerated, a corrupted WAL
//! record or SST block is a clear error naming the file, never silently lost data.

use std::path::{Path, PathBuf};

use presage_engine::{
    range_checksum, Cf, Engine, EngineError, KeyRange, Reader, RocksEngine, WriteBatch, WriteOptions,
};

use crate::conformance::key;
use crate::fixture::{small_rocks_config, tempdir};

/// Files of the database under `dir` whose names end in `ext`, largest first.
fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(dir.join("db"))
        .expect("list db")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .map(|p| (std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0), p))
        .collect();
    out.sort_by_key(|f| std::cmp::Reverse(f.0));
    out.into_iter().map(|(_, p)| p).collect()
}

/// `n` synced writes of one 1 KiB value each, then the engine is closed.
fn write_and_close(dir: &Path, n: u32) {
    let engine = RocksEngine::open(dir, &small_rocks_config()).expect("open");
    for i in 0..n {
        let mut wb = WriteBatch::new();
        wb.put(Cf::Data, key(i), vec![b'v'; 1024]);
        engine.write(&wb, WriteOptions::SYNC).expect("write");
    }
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).expect("read file");
    let at = usize::try_from(offset).expect("offset");
    bytes[at] ^= 0x5a;
    std::fs::write(path, bytes).expect("write file");
}

#[test]
fn a_torn_wal_tail_is_tolerated_and_earlier_records_survive() {
    let dir = tempdir();
    write_and_close(dir.path(), 100);
    let wal = files(dir.path(), "log").into_iter().next().expect("a WAL file");
    let len = std::fs::metadata(&wal).expect("stat").len();
    // A write cut short by a crash: the last record is half there.
    std::fs::OpenOptions::new().write(true).open(&wal).expect("open wal").set_len(len - 300).expect("truncate");
    let engine = RocksEngine::open(dir.path(), &small_rocks_config()).expect("a torn tail opens");
    for i in 0..99 {
        assert!(engine.get(Cf::Data, &key(i)).expect("get").is_some(), "record {i} before the torn one is lost");
    }
    assert!(engine.get(Cf::Data, &key(99)).expect("get").is_none(), "the torn record cannot be read back");
}

#[test]
fn a_corrupted_wal_record_fails_the_open_naming_the_file() {
    let dir = tempdir();
    write_and_close(dir.path(), 100);
    let wal = files(dir.path(), "log").into_iter().next().expect("a WAL file");
    let len = std::fs::metadata(&wal).expect("stat").len();
    // A record in the middle, with synced records after it: dropping it and the rest silently
    // (RocksDB's default point-in-time recovery) would lose acknowledged writes.
    flip_byte(&wal, len / 2);
    let err = RocksEngine::open(dir.path(), &small_rocks_config()).err().expect("a corrupted WAL must not open");
    let name = wal.file_name().and_then(|n| n.to_str()).expect("name");
    assert!(matches!(err, EngineError::Corrupt(_)), "{err:?}");
    assert!(err.to_string().contains(name), "the error names the file {name}: {err}");
}

#[test]
fn a_bit_flip_in_an_sst_is_detected_on_read_naming_the_file() {
    let dir = tempdir();
    write_and_close(dir.path(), 200);
    // The reopen replays the WAL into an SST file; flip a bit of a data block in it.
    drop(RocksEngine::open(dir.path(), &small_rocks_config()).expect("reopen"));
    let sst = files(dir.path(), "sst").into_iter().next().expect("an SST file");
    flip_byte(&sst, 2000);
    let engine = RocksEngine::open(dir.path(), &small_rocks_config()).expect("open");
    let name = sst.file_name().and_then(|n| n.to_str()).expect("name");
    let err = range_checksum(&engine, Cf::Data, &KeyRange::all()).expect_err("the flip must be found");
    assert!(matches!(err, EngineError::Corrupt(_)), "{err:?}");
    assert!(err.to_string().contains(name), "the error names the file {name}: {err}");
    let errors = (0..200).filter(|i| engine.get(Cf::Data, &key(*i)).is_err()).count();
    assert!(errors > 0, "a point read of the damaged block fails instead of answering");
}
