//! Scrape-time readers of a node server's state: each returns a function that `/metrics`
//! (`crate::node`'s gauge probe) calls at every scrape, holding no lock across calls.

use std::sync::Arc;

use presage_engine::Engine;
use presage_shardmgr::Manager;

use super::{admission, consistency, lock, Server};

impl<E: Engine> Server<E> {
    /// A function reading the splits and merges this node carried out as a shard's leader,
    /// and the shard manager's counts while this node runs it.
    pub fn counters(&self) -> impl Fn() -> (u64, u64, Option<presage_shardmgr::ManagerStats>) + Send + Sync + 'static {
        let inner = Arc::clone(&self.inner);
        move || {
            use std::sync::atomic::Ordering::Relaxed;
            let stats = lock(&inner.manager).as_ref().map(Manager::stats);
            (inner.splits.load(Relaxed), inner.merges.load(Relaxed), stats)
        }
    }

    /// True while the node refuses client writes for want of disk space ([`disk_space`]).
    pub fn disk_writes_refused(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let inner = Arc::clone(&self.inner);
        move || inner.disk_space.low()
    }

    /// The consistency checker's counts and open mismatches ([`consistency`]).
    pub fn consistency_stats(&self) -> impl Fn() -> consistency::ConsistencyStats + Send + Sync + 'static {
        let inner = Arc::clone(&self.inner);
        move || lock(&inner.consistency).stats.clone()
    }

    /// Admission by priority's figures ([`admission`]).
    pub fn admission_stats(&self) -> impl Fn() -> admission::AdmissionStats + Send + Sync + 'static {
        let inner = Arc::clone(&self.inner);
        move || lock(&inner.admission).stats()
    }

    /// The shard manager's predictions as metric values, while this node runs it.
    pub fn risk_gauges(&self) -> impl Fn() -> Option<crate::metrics::RiskGauges> + Send + Sync + 'static {
        let inner = Arc::clone(&self.inner);
        move || {
            // One lock at a time: the manager's is released before the predictions' is taken.
            let runs_manager = lock(&inner.manager).is_some();
            runs_manager.then(|| lock(&inner.pfa).gauges())
        }
    }
}
