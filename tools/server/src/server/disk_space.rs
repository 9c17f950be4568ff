//! Writes refused while the disk is nearly full, reads served, writes taken again when space
//! returns.
//!
//! A full disk fails an engine write, and a node whose write failed stops (fail-stop: its
//! Raft state may be ahead of its disk). So the node keeps a reserve: at every heartbeat it
//! reads the free bytes of its engine's file system ([`presage_engine::StorageStats`]), and
//! while they are below `reserve-space-bytes` it refuses the client writes it would propose
//! as a leader with [`ProtoError::DiskFull`] (definite: nothing done), serving reads as
//! usual. Writes that only pass through (forwarded to another leader) are not refused. The
//! reserve takes what still comes: Raft appends of shards led elsewhere, the meta shard,
//! compaction. Past it, RocksDB's own ENOSPC stops the node. Each change is logged; the
//! metric `presage_disk_writes_refused` is 1 while refusing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use presage_client::{ProtoError, Route};
use presage_engine::Engine;

use super::Inner;

/// The node's view of its free space.
#[derive(Debug, Default)]
pub(crate) struct DiskSpace {
    low: AtomicBool,
    available_bytes: AtomicU64,
}

impl DiskSpace {
    /// True while client writes are refused.
    pub(crate) fn low(&self) -> bool {
        self.low.load(Ordering::Relaxed)
    }
}

/// Reads the free space again (each heartbeat).
pub(crate) fn check<E: Engine>(inner: &Inner<E>) {
    let reserve = inner.cfg.reserve_space_bytes;
    let available = if reserve == 0 { None } else { inner.engine.storage_stats().available_bytes };
    let low = available.is_some_and(|a| a < reserve);
    inner.disk_space.available_bytes.store(available.unwrap_or(0), Ordering::Relaxed);
    let was = inner.disk_space.low.swap(low, Ordering::Relaxed);
    if was != low {
        let free = available.unwrap_or(0);
        if low {
            tracing::error!(
                node = inner.me.id,
                free_bytes = free,
                reserve_bytes = reserve,
                "disk nearly full: client writes refused, reads served, until space returns"
            );
        } else {
            tracing::warn!(
                node = inner.me.id,
                free_bytes = free,
                reserve_bytes = reserve,
                "disk space back: writes taken again"
            );
        }
    }
}

/// The refusal of a client write routed by `route`, if this node leads its shard while low
/// on space.
pub(crate) async fn refusal<E: Engine>(inner: &Arc<Inner<E>>, route: &Route) -> Option<ProtoError> {
    if !inner.disk_space.low() {
        return None;
    }
    let leads = inner.node.status(route.shard).await.ok().flatten().is_some_and(|s| s.is_leader());
    leads.then(|| ProtoError::DiskFull {
        node: inner.me.id,
        available_bytes: inner.disk_space.available_bytes.load(Ordering::Relaxed),
        reserve_bytes: inner.cfg.reserve_space_bytes,
    })
}
