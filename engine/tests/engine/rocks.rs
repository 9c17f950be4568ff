//! RocksDB-specific behaviour: durability across reopen, ingest semantics, and the node's
//! engine stack (metrics over fault injection over RocksDB).

use std::sync::Arc;
use std::time::Duration;

use presage_engine::{
    Cf, Engine, EngineError, FaultConfig, FaultInjector, FaultRule, FaultyEngine, KeyRange, MeteredEngine, Reader,
    RocksEngine, WriteBatch, WriteOptions,
};

use crate::conformance::{key, put_all};
use crate::fixture::{rocks, small_rocks_config, Fixture};

/// Closes the engine and opens it again from its directory (what a restart does).
pub fn reopen(f: Fixture<RocksEngine>) -> Fixture<RocksEngine> {
    let Fixture { engine, dir } = f;
    drop(engine);
    let dir = dir.expect("rocks fixture has a directory");
    let engine = RocksEngine::open(dir.path(), &small_rocks_config()).expect("reopen");
    Fixture { engine, dir: Some(dir) }
}

#[test]
fn synced_writes_survive_reopen() {
    let f = rocks();
    let mut wb = WriteBatch::new();
    wb.put(Cf::Data, b"d".to_vec(), b"1".to_vec()).put(Cf::Raft, b"r".to_vec(), b"2".to_vec()).put(
        Cf::Meta,
        b"m".to_vec(),
        b"3".to_vec(),
    );
    f.write(&wb, WriteOptions::SYNC).expect("write");
    let f = reopen(f);
    assert_eq!(f.get(Cf::Data, b"d").expect("get"), Some(b"1".to_vec()));
    assert_eq!(f.get(Cf::Raft, b"r").expect("get"), Some(b"2".to_vec()));
    assert_eq!(f.get(Cf::Meta, b"m").expect("get"), Some(b"3".to_vec()));
}

/// What the log writer does: unsynced writes, then one `sync_wal`, then a restart. This shows
/// that the sync succeeds on the node's RocksDB settings and that every write is there after
/// it; that the bytes reached the disk (a power loss) it cannot show: that rests on RocksDB's
/// SyncWAL.
#[test]
fn unsynced_writes_then_sync_wal_survive_reopen() {
    let f = rocks();
    for i in 0..50 {
        let mut wb = WriteBatch::new();
        wb.put(Cf::Raft, key(i), vec![i as u8; 64]).put(Cf::Meta, b"hard".to_vec(), key(i));
        f.write(&wb, WriteOptions::NO_SYNC).expect("write");
    }
    f.sync_wal().expect("sync the WAL");
    let f = reopen(f);
    for i in 0..50 {
        assert_eq!(f.get(Cf::Raft, &key(i)).expect("get"), Some(vec![i as u8; 64]), "entry {i}");
    }
    assert_eq!(f.get(Cf::Meta, b"hard").expect("get"), Some(key(49)));
}

#[test]
fn sync_wal_is_a_sync_for_fault_injection_and_metrics() {
    let f = rocks();
    let faults = Arc::new(FaultInjector::new());
    let e = MeteredEngine::new(FaultyEngine::new(f.engine.clone(), Arc::clone(&faults))).expect("metrics");
    let mut wb = WriteBatch::new();
    wb.put(Cf::Raft, b"e".to_vec(), b"1".to_vec());
    e.write(&wb, WriteOptions::NO_SYNC).expect("write");
    e.sync_wal().expect("sync");
    faults.set(FaultConfig { sync: FaultRule::errors(1.0), ..FaultConfig::default() }).expect("set faults");
    e.write(&wb, WriteOptions::NO_SYNC).expect("an unsynced write is not a sync");
    let err = e.sync_wal().expect_err("injected fsync error");
    assert!(matches!(err, EngineError::Injected { class: "sync" }), "{err}");
    let m = e.metrics_snapshot();
    assert_eq!((m.sync.count, m.sync_errors, m.write.count), (2, 1, 2));
}

#[test]
fn replace_range_survives_reopen_and_compaction() {
    let f = rocks();
    put_all(&*f, Cf::Data, (0..1000).map(|i| (key(i), b"old".to_vec())));
    f.flush().expect("flush");
    let target = KeyRange::new(key(100), Some(key(900))).expect("range");
    let mut fresh = (100..900).step_by(2).map(|i| Ok((key(i), b"new".to_vec())));
    f.replace_range(Cf::Data, &target, &mut fresh).expect("replace");
    let ingest_dir = f.dir.as_ref().expect("dir").path().join("ingest");
    assert!(std::fs::read_dir(&ingest_dir).expect("ingest dir").next().is_none(), "no ingest file left behind");
    let f = reopen(f);
    f.compact_range(Cf::Data, &KeyRange::all()).expect("compact");
    for i in 0..1000 {
        let want = match i {
            100..900 if i % 2 == 0 => Some(b"new".to_vec()),
            100..900 => None,
            _ => Some(b"old".to_vec()),
        };
        assert_eq!(f.get(Cf::Data, &key(i)).expect("get"), want, "key {i}");
    }
    assert!(
        std::fs::read_dir(f.dir.as_ref().expect("dir").path().join("ingest")).expect("ingest dir").next().is_none(),
        "no ingest file left behind"
    );
}

#[test]
fn injected_latency_and_errors_show_in_metrics() {
    let f = rocks();
    let faults = Arc::new(FaultInjector::new());
    let e = MeteredEngine::new(FaultyEngine::new(f.engine.clone(), Arc::clone(&faults))).expect("metrics");
    let mut wb = WriteBatch::new();
    wb.put(Cf::Data, b"k".to_vec(), b"v".to_vec());
    for _ in 0..20 {
        e.write(&wb, WriteOptions::SYNC).expect("write");
    }
    let base = e.metrics_snapshot();
    assert_eq!(base.sync.count, 20);
    faults
        .set(FaultConfig {
            sync: FaultRule::fixed_latency(Duration::from_millis(5)),
            read: FaultRule::errors(1.0),
            ..FaultConfig::default()
        })
        .expect("set faults");
    for _ in 0..10 {
        e.write(&wb, WriteOptions::SYNC).expect("slow write");
    }
    for _ in 0..3 {
        let err = e.get(Cf::Data, b"k").expect_err("injected read error");
        assert!(matches!(err, EngineError::Injected { class: "read" }));
    }
    let now = e.metrics_snapshot();
    let slow = now.sync.since(&base.sync);
    assert_eq!(slow.count, 10);
    let mean = slow.mean_seconds().expect("observations");
    assert!(mean >= 0.005, "mean synced write {mean}s includes the injected 5ms");
    assert!(slow.quantile_upper_bound(0.5).expect("p50") >= 0.005);
    assert_eq!(now.read_errors, 3);
    assert_eq!(now.sync_errors, 0);
    assert!(now.storage.memtable_bytes > 0);
    faults.clear();
    assert!(e.get(Cf::Data, b"k").expect("read").is_some());
    let text = prometheus::TextEncoder::new().encode_to_string(&e.metrics().registry().gather()).expect("encode");
    assert!(text.contains("presage_engine_sync_write_seconds_count 30"), "{text}");
    assert!(text.contains("presage_engine_errors_total{class=\"read\"} 3"), "{text}");
}

#[test]
fn snapshot_outlives_engine_handle() {
    let f = rocks();
    put_all(&*f, Cf::Data, vec![(b"a".to_vec(), b"1".to_vec())]);
    let snap = f.snapshot();
    let Fixture { engine, dir } = f;
    drop(engine);
    assert_eq!(snap.get(Cf::Data, b"a").expect("get"), Some(b"1".to_vec()));
    drop(snap);
    drop(dir);
}

#[test]
fn storage_stats_report_rocksdb_state() {
    let f = rocks();
    put_all(&*f, Cf::Data, (0..50_000).map(|i| (key(i), vec![3u8; 200])));
    f.flush().expect("flush");
    let s = f.storage_stats();
    assert!(s.sst_bytes > 0, "{s:?}");
    assert!(!s.write_stopped);
}

#[test]
fn second_open_of_a_busy_folder_fails_without_harm() {
    let f = rocks();
    put_all(&*f, Cf::Data, vec![(b"a".to_vec(), b"1".to_vec())]);
    let dir = f.dir.as_ref().expect("dir").path().to_path_buf();
    assert!(RocksEngine::open(&dir, &small_rocks_config()).is_err(), "RocksDB's lock refuses a second engine");
    let mut fresh = std::iter::once(Ok((b"b".to_vec(), b"2".to_vec())));
    f.replace_range(Cf::Data, &KeyRange::all(), &mut fresh).expect("the running engine still ingests");
    assert_eq!(f.get(Cf::Data, b"b").expect("get"), Some(b"2".to_vec()));
}
