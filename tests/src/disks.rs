//! Test nodes' disk faults: each node's store runs on a `FaultyEngine` over its `MemEngine`,
//! behind an injector renewed at each start (a restarted node's disk works again); the faults
//! the nemeses inject; and power losses that keep a random prefix of the unsynced writes.

use std::collections::BTreeMap;
use std::sync::Arc;

use presage_engine::{FaultConfig, FaultInjector, FaultRule, FaultyEngine, MemEngine};
use rand::Rng;

/// The engine a test node's store (and server) runs on.
pub type NodeEngine = FaultyEngine<MemEngine>;

/// Every node's fault injector.
#[derive(Default)]
pub struct DiskFaults {
    injectors: BTreeMap<u64, Arc<FaultInjector>>,
}

impl DiskFaults {
    /// Node `id`'s engine behind a fresh injector (what a start opens).
    pub fn open(&mut self, id: u64, engine: &MemEngine) -> NodeEngine {
        let injector = Arc::new(FaultInjector::new());
        self.injectors.insert(id, Arc::clone(&injector));
        FaultyEngine::new(engine.clone(), injector)
    }

    /// Node `id`'s engine behind its current injector (for a second user of the same disk).
    pub fn current(&self, id: u64, engine: &MemEngine) -> NodeEngine {
        let injector = self.injectors.get(&id).cloned().unwrap_or_default();
        FaultyEngine::new(engine.clone(), injector)
    }

    /// Injects `faults` into node `id`'s disk until it restarts.
    pub fn fail(&self, id: u64, faults: FaultConfig) {
        if let Some(injector) = self.injectors.get(&id) {
            injector.set(faults).expect("valid fault configuration");
        }
    }

    /// Ends node `id`'s disk faults.
    pub fn heal(&self, id: u64) {
        if let Some(injector) = self.injectors.get(&id) {
            injector.clear();
        }
    }

    /// Ends every node's disk faults.
    pub fn heal_all(&self) {
        self.injectors.values().for_each(|i| i.clear());
    }
}

/// What a power loss kept of a node's unsynced writes.
#[derive(Debug, Clone, Copy)]
pub struct PowerLoss {
    /// Unsynced writes that survived (the oldest ones).
    pub kept: usize,
    /// Unsynced writes there were.
    pub unsynced: usize,
}

impl PowerLoss {
    /// Writes the loss dropped.
    pub fn lost(&self) -> usize {
        self.unsynced - self.kept
    }
}

/// Cuts `engine`'s power keeping a random prefix of its unsynced writes; returns the engine a
/// restart finds and what was kept (see [`MemEngine::crash`]).
pub fn lose_power(engine: &MemEngine, rng: &mut impl Rng) -> (MemEngine, PowerLoss) {
    let unsynced = engine.unsynced_writes();
    let kept = rng.random_range(0..=unsynced);
    (engine.crash(kept), PowerLoss { kept, unsynced })
}

/// One of the faults that stop a node: fsync errors, write errors or a full disk.
pub fn random_stopping_fault(rng: &mut impl Rng) -> (&'static str, FaultConfig) {
    match rng.random_range(0..3) {
        0 => ("fsync errors", FaultConfig { sync: FaultRule::errors(1.0), ..FaultConfig::default() }),
        1 => ("write errors", FaultConfig { write: FaultRule::errors(1.0), ..FaultConfig::default() }),
        _ => ("a full disk", FaultConfig { disk_full: true, ..FaultConfig::default() }),
    }
}
