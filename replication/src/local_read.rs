//! Leased reads served on the caller's thread, without a trip through the store loop.
//!
//! A leader whose read lease holds (see [`crate::peer::Peer::read`] for why a lease is safe)
//! answers a read from its engine at once. Going through the loop for that costs two thread
//! hand-offs and a wait behind whatever round the loop is in; instead the loop publishes each
//! leader's lease in [`LeaseViews`] and [`LocalReader`] serves from it. Walk-through:
//!
//! The lease table is `lease.rs`.
//!
//! 1. **publish** (store loop, end of a replica's ready round, `Peer::publish_lease`): a
//!    leader whose lease holds, not merging, with everything committed applied (so every
//!    entry of earlier terms is in the engine) publishes `(term, descriptor, lease end)`.
//!    A renewal in the same term and epoch keeps the view's generation; anything else is a
//!    new generation.
//! 2. **withdraw** (at once, on the loop): when the lease ends (a transfer starts, a split or
//!    merge applies), when the replica stops leading or its lease lapses, and when the
//!    replica is dropped; off the loop only by a fence (`lease.rs`).
//! 3. **read** (caller's thread, [`LocalReader::try_read`]): take the view, check the lease
//!    end against the clock, the epoch and that the keys are in range; read the engine; then
//!    check again that the same generation is still published and its lease still holds.
//!    Any failed check sends the read the loop's way (which answers errors, redirections and
//!    ReadIndex rounds as before). A follower replica publishes the leader it knows instead
//!    (`Peer::publish_leader_hint`), and a read for it gets the loop's answer, `NotLeader`
//!    with that leader, at once: the node that took it forwards it without waking the loop.
//!
//! Why the read is linearizable: an acknowledged write was applied to the leader's engine
//! before its acknowledgement (callbacks run after the round's apply batch is written), and
//! everything of earlier terms was applied before the first publication of this term, so
//! the engine holds every write acknowledged before the read began. No other leader can
//! commit while the lease holds, and the lease held (the same generation, not lapsed) from
//! before the engine read until after it: the read sees no write of another leader, and a
//! withdrawal that must stop reads (a transfer) happens before the message that lets the
//! transferee campaign is sent: on the loop, or, for a loop stuck on its disk, by the fence
//! the node's own check sets before it sends that message itself (`lease.rs`).
//!
//! Architecture invariant: only the store loop publishes and withdraws, except the fence of
//! a stuck loop; readers never write the table.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use presage_engine::Engine;

use crate::lease::LeaseViews;
use crate::peer::{execute_read, ReadRequest, ReadResponse};
use crate::wire::{Epoch, ShardDescriptor};
use crate::Result;

/// Reads one replica's engine: what [`LocalReader`] calls under a lease.
type ReadFn = dyn Fn(&ShardDescriptor, &ReadRequest, u64) -> Result<ReadResponse> + Send + Sync;

/// Serves leased reads on the caller's thread (see the module doc).
pub struct LocalReader {
    views: Arc<LeaseViews>,
    read: Box<ReadFn>,
    served: AtomicU64,
}

impl LocalReader {
    /// A reader of `engine` under the leases in `views`.
    pub fn new<E: Engine>(views: Arc<LeaseViews>, engine: E) -> Self {
        let read = move |desc: &ShardDescriptor, request: &ReadRequest, now_ms: u64| {
            execute_read(&engine, desc, request, now_ms)
        };
        LocalReader { views, read: Box::new(read), served: AtomicU64::new(0) }
    }

    /// Answers `request` on `shard_id` at `epoch` under a published lease, redirects it to
    /// the leader a follower replica here published (`NotLeader`), or `None` when it must go
    /// through the store loop (no lease and no hint, a stale epoch, a key out of range, or
    /// the lease ended during the read). `now` reads the node's monotonic clock.
    pub fn try_read(
        &self,
        shard_id: u64,
        epoch: Epoch,
        request: &ReadRequest,
        now: impl Fn() -> Instant,
    ) -> Option<Result<ReadResponse>> {
        let Some(view) = self.views.get(shard_id) else {
            // A follower here: the loop would answer `NotLeader` with the leader it knows.
            let leader = self.views.leader_hint(shard_id)?;
            return Some(Err(crate::Error::NotLeader { shard_id, leader: Some(leader) }));
        };
        if now() >= view.until || self.views.clock.out_of_sync() {
            return None;
        }
        let desc = &*view.descriptor;
        let in_range = request.keys().iter().all(|k| desc.contains(k));
        if desc.merging_into.is_some() || epoch.version != desc.epoch().version || !in_range {
            return None;
        }
        let clock_ms = self.views.clock.now_ms();
        let now_ms = view.clock_floor_ms.fetch_max(clock_ms, Ordering::Relaxed).max(clock_ms);
        let result = (self.read)(desc, request, now_ms);
        if !self.views.still_holds(shard_id, view.generation, now()) {
            return None;
        }
        self.served.fetch_add(1, Ordering::Relaxed);
        Some(result)
    }

    /// Reads served off the loop since the node started.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// The published leases.
    pub fn views(&self) -> &LeaseViews {
        &self.views
    }
}
