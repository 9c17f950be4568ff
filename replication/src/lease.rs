//! The read leases a node's leaders publish for reads served off the store loop (see
//! `local_read.rs` for the walk-through and why it is safe), and the leader each follower
//! knows, so that a read sent to a follower is redirected without a trip through the loop.
//! Only the store loop publishes and withdraws; readers only look.
//!
//! One exception, for a loop stuck in a disk call: [`LeaseViews::fence`] withdraws a view
//! and fences its term, so that no lease of that term is published or honoured again
//! (the loop's own leased reads check the fence too, `Peer::lease_holds`). Only then may
//! the node ask its followers to take over without the loop (`NodeHandle::hand_off_stuck`):
//! a follower that campaigns at once breaks the lease's premise that no other leader is
//! elected before an election timeout, so no lease of that term may outlive the fence.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use crate::clock::GroupClock;
use crate::wire::ShardDescriptor;

/// One leader's published lease.
#[derive(Clone)]
pub(crate) struct LeaseView {
    /// Changes whenever the view is withdrawn and published again, or its term or epoch
    /// changes; a renewal keeps it.
    pub(crate) generation: u64,
    term: u64,
    /// Reads may be answered strictly before this instant (the node's monotonic clock).
    pub(crate) until: Instant,
    pub(crate) descriptor: Arc<ShardDescriptor>,
    /// The replica's expiry clock floor (see `Peer::now_ms`), shared with it.
    pub(crate) clock_floor_ms: Arc<AtomicU64>,
}

/// What a replica publishes (see [`LeaseViews::publish`]).
pub(crate) struct Lease {
    pub(crate) term: u64,
    pub(crate) until: Instant,
    pub(crate) descriptor: ShardDescriptor,
    pub(crate) clock_floor_ms: Arc<AtomicU64>,
}

/// Every leader lease on a node that reads may be served under off the loop, by shard.
#[derive(Default)]
pub struct LeaseViews {
    views: RwLock<HashMap<u64, LeaseView>>,
    next_generation: AtomicU64,
    /// The leader each follower replica here knows, by shard: a hint, never a right to serve.
    leaders: RwLock<HashMap<u64, u64>>,
    /// Fenced terms by shard: no lease of this term or an earlier one holds (taken after
    /// `views` when both are held).
    fenced: RwLock<HashMap<u64, u64>>,
    /// The node's clock for expiry, shared by its replicas and the readers off the loop.
    pub(crate) clock: Arc<GroupClock>,
}

impl LeaseViews {
    /// Views of a node whose expiry clock is `clock`.
    pub(crate) fn with_clock(clock: Arc<GroupClock>) -> Self {
        LeaseViews { clock, ..LeaseViews::default() }
    }

    /// Publishes (or renews) `shard_id`'s lease; returns the view's generation.
    /// A fenced term is not published (the returned generation is then that of no view).
    pub(crate) fn publish(&self, shard_id: u64, lease: Lease) -> u64 {
        let mut views = self.views.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.fenced(shard_id, lease.term) {
            return 0;
        }
        if let Some(v) = views.get_mut(&shard_id) {
            if v.term == lease.term && *v.descriptor == lease.descriptor {
                v.until = v.until.max(lease.until);
                return v.generation;
            }
        }
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed) + 1;
        let view = LeaseView {
            generation,
            term: lease.term,
            until: lease.until,
            descriptor: Arc::new(lease.descriptor),
            clock_floor_ms: lease.clock_floor_ms,
        };
        views.insert(shard_id, view);
        generation
    }

    /// Withdraws `shard_id`'s lease if `generation` is still the one published (`None`:
    /// whatever is published).
    pub(crate) fn withdraw(&self, shard_id: u64, generation: Option<u64>) {
        let mut views = self.views.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if views.get(&shard_id).is_some_and(|v| generation.is_none_or(|g| v.generation == g)) {
            views.remove(&shard_id);
        }
    }

    pub(crate) fn get(&self, shard_id: u64) -> Option<LeaseView> {
        self.views.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(&shard_id).cloned()
    }

    /// True while `generation` of `shard_id` is published and its lease holds at `now`.
    pub(crate) fn still_holds(&self, shard_id: u64, generation: u64, now: Instant) -> bool {
        let views = self.views.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        views.get(&shard_id).is_some_and(|v| v.generation == generation && now < v.until)
    }

    /// Sets (`Some`) or clears the leader a follower replica of `shard_id` knows.
    pub(crate) fn set_leader_hint(&self, shard_id: u64, leader: Option<u64>) {
        let mut leaders = self.leaders.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        match leader {
            Some(l) => leaders.insert(shard_id, l),
            None => leaders.remove(&shard_id),
        };
    }

    /// The leader a follower replica of `shard_id` knows, if it published one.
    pub(crate) fn leader_hint(&self, shard_id: u64) -> Option<u64> {
        self.leaders.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(&shard_id).copied()
    }

    /// Every published view: `(shard, term, descriptor)`.
    pub(crate) fn list(&self) -> Vec<(u64, u64, Arc<ShardDescriptor>)> {
        let views = self.views.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        views.iter().map(|(shard, v)| (*shard, v.term, Arc::clone(&v.descriptor))).collect()
    }

    /// Withdraws `shard_id`'s published view and fences its term; returns that term and
    /// descriptor (`None`: nothing was published), for the caller to hand the leadership away.
    pub(crate) fn fence(&self, shard_id: u64) -> Option<(u64, Arc<ShardDescriptor>)> {
        let mut views = self.views.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut fenced = self.fenced.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let view = views.remove(&shard_id)?;
        let f = fenced.entry(shard_id).or_insert(0);
        *f = (*f).max(view.term);
        Some((view.term, view.descriptor))
    }

    /// Forgets `shard_id`'s fence (its replica is gone from this node).
    pub(crate) fn forget_fence(&self, shard_id: u64) {
        self.fenced.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&shard_id);
    }

    /// True when `shard_id`'s leases of `term` were fenced ([`LeaseViews::fence`]).
    pub(crate) fn fenced(&self, shard_id: u64, term: u64) -> bool {
        let fenced = self.fenced.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        fenced.get(&shard_id).is_some_and(|f| term <= *f)
    }

    /// Shards whose lease is published now.
    pub fn published(&self) -> usize {
        self.views.read().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn lease(term: u64) -> Lease {
        Lease {
            term,
            until: Instant::now() + Duration::from_secs(60),
            descriptor: ShardDescriptor { id: 1, ..ShardDescriptor::default() },
            clock_floor_ms: Arc::default(),
        }
    }

    /// A fence withdraws what was published and keeps its term from being published again;
    /// a later term (a new leadership) publishes as before.
    #[test]
    fn a_fenced_term_is_withdrawn_and_never_published_again() {
        let views = LeaseViews::default();
        let generation = views.publish(1, lease(5));
        assert!(views.still_holds(1, generation, Instant::now()));
        assert_eq!(views.list().iter().map(|(s, t, _)| (*s, *t)).collect::<Vec<_>>(), [(1, 5)]);
        assert_eq!(views.fence(1).map(|(t, _)| t), Some(5));
        assert!(!views.still_holds(1, generation, Instant::now()), "withdrawn");
        assert!(views.fenced(1, 5) && views.fenced(1, 4) && !views.fenced(1, 6) && !views.fenced(2, 5));
        views.publish(1, lease(5));
        assert_eq!(views.published(), 0, "the fenced term is not published again");
        assert!(views.fence(1).is_none(), "nothing left to fence");
        let later = views.publish(1, lease(6));
        assert!(views.still_holds(1, later, Instant::now()), "a later term publishes");
        views.forget_fence(1);
        assert!(!views.fenced(1, 5), "forgotten with the replica");
    }
}
