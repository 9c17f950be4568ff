//! The clock for expiry: the median of the clocks a node hears, not its own wall clock.
//!
//! A value's deadline is decided against the proposer's time, carried in the log so that
//! every replica decides alike (`value.rs`); a leader whose wall clock jumped forward would
//! otherwise delete live values on every replica, and one that jumped back would keep dead
//! ones. So each node estimates the clocks of the nodes it hears from (its "group": every
//! peer that sends it Raft messages or pings): every Raft envelope carries its sender's time
//! as it left (`clock_ms`), and an estimate is that reading plus the time since it arrived,
//! on this node's monotonic clock. Once per tick ([`GroupClock::check`]) the node takes the
//! median of its own clock and the fresh estimates (with one estimate, the lower of the two,
//! so that a disagreement expires values late, never early; with none, its own clock) and
//! keeps that group time with the monotonic instant it was taken; "now"
//! ([`GroupClock::now_ms`]) runs on from it by the monotonic clock, so a read costs a clock
//! read, and a jump of the node's wall clock between two checks shows nowhere until a check
//! weighs it against the peers. One clock off by any amount moves nothing as long as the
//! majority of the clocks a node hears agree.
//!
//! Past `max-clock-offset-ms` of offset the node is out of sync: it says so (a log line on
//! each change, `StoreSummary`, the metric `presage_clock_offset_seconds`), and its leaders
//! serve no read under a lease, on the loop or off it, until it is back (every read takes a
//! ReadIndex round).
//!
//! Limits: an estimate lags by the message's transit and queueing time, so peers read late by
//! that much (expiry later, never earlier; a node whose messages wait more than the maximum
//! offset counts itself out of sync and stops leased reads, the safe side). A node that hears
//! nobody fresh uses its own clock; a replica's clock never goes back (`Peer::now_ms`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most peers whose readings a node keeps (the oldest reading goes first past it).
pub const MAX_CLOCK_PEERS: usize = 4096;

/// A peer's clock as last heard.
#[derive(Debug, Clone, Copy)]
struct Reading {
    clock_ms: u64,
    at: Instant,
}

/// A node's clock for expiry (see the module doc).
#[derive(Debug)]
pub struct GroupClock {
    /// Added to the wall clock (a test's or an operator's injected skew).
    skew_ms: AtomicI64,
    max_offset_ms: u64,
    max_age: Duration,
    readings: Mutex<HashMap<u64, Reading>>,
    /// The group's median clock minus this node's, as of the last [`GroupClock::check`], ms.
    offset_ms: AtomicI64,
    /// The group's time at the last check less the monotonic time from `origin` to that
    /// check, ms: "now" is this plus the monotonic time since `origin` (one atomic read, no
    /// lock on the read path), so a jump of the wall clock between checks shows nowhere until
    /// a check weighs it against the peers.
    base_ms: AtomicI64,
    /// The instant `base_ms` counts from.
    origin: Instant,
    /// Whether any fresh reading counted at the last check.
    heard: AtomicBool,
    out_of_sync: AtomicBool,
}

impl Default for GroupClock {
    fn default() -> Self {
        GroupClock::new(500, 10_000)
    }
}

impl GroupClock {
    /// A clock that counts a node out of sync past `max_offset_ms` and uses readings at
    /// most `max_age_ms` old.
    pub fn new(max_offset_ms: u64, max_age_ms: u64) -> Self {
        GroupClock {
            skew_ms: AtomicI64::new(0),
            max_offset_ms,
            max_age: Duration::from_millis(max_age_ms),
            readings: Mutex::new(HashMap::new()),
            offset_ms: AtomicI64::new(0),
            base_ms: AtomicI64::new(crate::value::wall_now_ms() as i64),
            origin: Instant::now(),
            heard: AtomicBool::new(false),
            out_of_sync: AtomicBool::new(false),
        }
    }

    /// This node's own clock: the wall clock plus any injected skew (Unix ms).
    pub fn own_ms(&self) -> u64 {
        let wall = crate::value::wall_now_ms();
        let skew = self.skew_ms.load(Ordering::Relaxed);
        wall.saturating_add_signed(skew)
    }

    /// Moves this node's clock by `skew_ms` from the wall clock (tests and fault injection).
    pub fn set_skew_ms(&self, skew_ms: i64) {
        self.skew_ms.store(skew_ms, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Reading>> {
        self.readings.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records `peer`'s clock as carried by an envelope that arrived at `at`.
    pub(crate) fn record(&self, peer: u64, clock_ms: u64, at: Instant) {
        if clock_ms == 0 {
            return; // a sender that does not stamp its envelopes
        }
        let mut readings = self.lock();
        if readings.len() >= MAX_CLOCK_PEERS && !readings.contains_key(&peer) {
            if let Some(oldest) = readings.iter().min_by_key(|(_, r)| r.at).map(|(p, _)| *p) {
                readings.remove(&oldest);
            }
        }
        readings.insert(peer, Reading { clock_ms, at });
    }

    /// The fresh estimates of the peers' clocks now.
    fn estimates(&self, now: Instant) -> Vec<u64> {
        let readings = self.lock();
        readings
            .values()
            .filter(|r| now.saturating_duration_since(r.at) <= self.max_age)
            .map(|r| r.clock_ms.saturating_add(now.saturating_duration_since(r.at).as_millis() as u64))
            .collect()
    }

    /// The time for expiry: the group's time at the last check, run on by the monotonic
    /// clock since (see the module doc).
    pub fn now_ms(&self) -> u64 {
        let ran_ms = self.origin.elapsed().as_millis() as i64;
        u64::try_from(self.base_ms.load(Ordering::Relaxed).saturating_add(ran_ms)).unwrap_or(0)
    }

    /// The group's median clock ([`group_time`]) minus this node's, in ms, as of the last
    /// [`GroupClock::check`]; `None` when no fresh reading counted (positive: this node is
    /// behind).
    pub fn offset_ms(&self) -> Option<i64> {
        self.heard.load(Ordering::Relaxed).then(|| self.offset_ms.load(Ordering::Relaxed))
    }

    /// Measures the offset again from the fresh readings and updates
    /// [`GroupClock::out_of_sync`]; returns the offset and whether the verdict changed.
    pub fn check(&self) -> (Option<i64>, bool) {
        let own = self.own_ms();
        let now = Instant::now();
        let estimates = self.estimates(now);
        let group = group_time(own, &estimates);
        let ran_ms = now.saturating_duration_since(self.origin).as_millis() as i64;
        self.base_ms.store(group as i64 - ran_ms, Ordering::Relaxed);
        let offset = group as i64 - own as i64;
        self.offset_ms.store(offset, Ordering::Relaxed);
        self.heard.store(!estimates.is_empty(), Ordering::Relaxed);
        let off = !estimates.is_empty() && offset.unsigned_abs() > self.max_offset_ms;
        let was = self.out_of_sync.swap(off, Ordering::Relaxed);
        (self.offset_ms(), was != off)
    }

    /// True while this node's clock was, at the last [`GroupClock::check`], further than
    /// `max-clock-offset-ms` from its peers'.
    pub fn out_of_sync(&self) -> bool {
        self.out_of_sync.load(Ordering::Relaxed)
    }

    /// The largest offset tolerated, in ms.
    pub fn max_offset_ms(&self) -> u64 {
        self.max_offset_ms
    }
}

/// The median of `own` and the `estimates` (the lower middle one for an even count; with
/// one estimate, the lower of the two).
pub fn group_time(own: u64, estimates: &[u64]) -> u64 {
    let mut all = Vec::with_capacity(estimates.len() + 1);
    all.push(own);
    all.extend_from_slice(estimates);
    all.sort_unstable();
    all[(all.len() - 1) / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_clock_off_moves_nothing() {
        // The node's own clock jumped an hour ahead: its two peers agree.
        assert_eq!(group_time(1_000 + 3_600_000, &[1_000, 1_010]), 1_010);
        // A peer jumped: the node's own and the other peer's agree.
        assert_eq!(group_time(1_000, &[1_000 + 3_600_000, 990]), 1_000);
    }

    #[test]
    fn with_one_peer_the_lower_clock_counts_and_alone_the_own() {
        assert_eq!(group_time(5_000, &[2_000]), 2_000);
        assert_eq!(group_time(2_000, &[5_000]), 2_000);
        assert_eq!(group_time(7_000, &[]), 7_000);
    }

    #[test]
    fn a_node_ahead_of_its_peers_is_out_of_sync_and_stale_readings_do_not_count() {
        let clock = GroupClock::new(500, 10_000);
        let now = Instant::now();
        let wall = crate::value::wall_now_ms();
        clock.record(2, wall, now);
        clock.record(3, wall, now);
        assert!(clock.check().0.is_some_and(|o| o.abs() <= 500), "in sync at first");
        assert!(!clock.out_of_sync());
        clock.set_skew_ms(3_600_000);
        let (offset, changed) = clock.check();
        assert!(changed && clock.out_of_sync(), "an hour ahead: offset {offset:?}");
        assert!(offset.is_some_and(|o| o < -3_000_000), "negative: the node is ahead, {offset:?}");
        assert!(clock.now_ms() < wall + 60_000, "expiry follows the peers, not the node");
        // Readings older than the limit are ignored: alone, the node uses its own clock.
        let stale = GroupClock::new(500, 0);
        stale.record(2, wall, now - Duration::from_millis(5));
        assert_eq!(stale.check(), (None, false));
        assert!(!stale.out_of_sync());
    }

    #[test]
    fn one_peer_far_behind_flags_only_itself() {
        // Three nodes; node 3 an hour behind. Node 1 hears 2 (in time) and 3 (behind).
        let wall = crate::value::wall_now_ms();
        let now = Instant::now();
        let healthy = GroupClock::new(500, 10_000);
        healthy.record(2, wall, now);
        healthy.record(3, wall - 3_600_000, now);
        let (offset, _) = healthy.check();
        assert!(!healthy.out_of_sync(), "a healthy node keeps its leases: offset {offset:?}");
        let behind = GroupClock::new(500, 10_000);
        behind.set_skew_ms(-3_600_000);
        behind.record(1, wall, now);
        behind.record(2, wall, now);
        let (offset, _) = behind.check();
        assert!(behind.out_of_sync() && offset.is_some_and(|o| o > 3_000_000), "offset {offset:?}");
        assert!(behind.now_ms() + 60_000 > wall, "its expiry follows the majority");
    }
}
