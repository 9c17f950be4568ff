//! Engines under test, each with whatever keeps it alive (a temporary directory).

use std::ops::Deref;
use std::sync::Arc;

use presage_engine::{FaultInjector, FaultyEngine, MemEngine, MeteredEngine, RocksConfig, RocksEngine};
use tempfile::TempDir;

/// An engine and its data directory, removed on drop.
pub struct Fixture<E> {
    pub engine: E,
    pub dir: Option<TempDir>,
}

impl<E> Deref for Fixture<E> {
    type Target = E;
    fn deref(&self) -> &E {
        &self.engine
    }
}

pub fn tempdir() -> TempDir {
    tempfile::Builder::new().prefix("presage-engine-test").tempdir().expect("create temp dir")
}

/// RocksDB with small memtables, so that flushes and compactions happen in tests.
pub fn small_rocks_config() -> RocksConfig {
    RocksConfig { block_cache_bytes: 8 << 20, write_buffer_bytes: 4 << 20, ..RocksConfig::default() }
}

pub fn mem() -> Fixture<MemEngine> {
    Fixture { engine: MemEngine::new(), dir: None }
}

pub fn rocks() -> Fixture<RocksEngine> {
    let dir = tempdir();
    let engine = RocksEngine::open(dir.path(), &small_rocks_config()).expect("open rocksdb");
    Fixture { engine, dir: Some(dir) }
}

/// The stack a node runs: metrics outside, fault injection (off) inside, RocksDB at the bottom.
pub fn metered_faulty_rocks() -> Fixture<MeteredEngine<FaultyEngine<RocksEngine>>> {
    let Fixture { engine, dir } = rocks();
    let engine = MeteredEngine::new(FaultyEngine::new(engine, Arc::new(FaultInjector::new()))).expect("metrics");
    Fixture { engine, dir }
}

pub fn metered_faulty_mem() -> Fixture<MeteredEngine<FaultyEngine<MemEngine>>> {
    let engine =
        MeteredEngine::new(FaultyEngine::new(MemEngine::new(), Arc::new(FaultInjector::new()))).expect("metrics");
    Fixture { engine, dir: None }
}

/// The seed of the seeded tests: `PRESAGE_TEST_SEED` or a fixed default. Printed so that a
/// failing run can be replayed.
pub fn seed() -> u64 {
    let seed = std::env::var("PRESAGE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_2026);
    eprintln!("test seed {seed} (replay with PRESAGE_TEST_SEED={seed})");
    seed
}
