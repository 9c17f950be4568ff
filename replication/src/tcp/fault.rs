//! Network faults on one node's outgoing Raft links, set at run time (a node's admin API,
//! `presage-ctl faults network`): the failure shapes of a bad NIC, a congested switch port or
//! a saturated uplink, for the fault library's scenarios. Off unless set.
//!
//! - **delay**: every envelope leaves `delay-ms` after it was queued (latency, not
//!   serialization: envelopes queued meanwhile go out together once due);
//! - **loss**: each envelope is dropped with probability `loss-rate` when queued (seeded, so a
//!   run replays);
//! - **bandwidth cap**: a link sends at most `bandwidth-bytes-per-sec` (each link paces its
//!   frames: a frame of `n` bytes is followed by `n / cap` seconds of silence).
//!
//! The transport applies them (`TcpTransport::send` drops, each link's pump waits); changing
//! the configuration takes effect for envelopes queued from then on. The node's requests to
//! its peers (forwarding, heartbeats, round-trip probes) take the same delay and loss
//! ([`NetFaults::draw_request`]): a bad link slows everything the node sends, so the failure
//! analysis sees it in the round trip to the fastest peer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};

/// Longest delay a configuration may set, in milliseconds.
pub const MAX_NET_DELAY_MS: u64 = 10_000;
/// Smallest bandwidth cap a configuration may set, in bytes per second (a smaller one would
/// hold a single 16 MiB frame for over a minute).
pub const MIN_NET_BANDWIDTH_BYTES_PER_SEC: u64 = 64 << 10;

/// Faults on a node's outgoing Raft links.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct NetFaultConfig {
    /// Extra latency of every envelope, in milliseconds.
    pub delay_ms: u64,
    /// Probability in `[0, 1]` that an envelope is dropped.
    pub loss_rate: f64,
    /// Most bytes per second each link sends (`0`: no cap).
    pub bandwidth_bytes_per_sec: u64,
    /// Seed of the loss draws.
    pub seed: u64,
}

impl NetFaultConfig {
    /// Checks every setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        if self.delay_ms > MAX_NET_DELAY_MS {
            return bad(format!("delay-ms {} > {MAX_NET_DELAY_MS}", self.delay_ms));
        }
        if !(0.0..=1.0).contains(&self.loss_rate) {
            return bad(format!("loss-rate {} is not within [0, 1]", self.loss_rate));
        }
        let cap = self.bandwidth_bytes_per_sec;
        if cap != 0 && cap < MIN_NET_BANDWIDTH_BYTES_PER_SEC {
            return bad(format!("bandwidth-bytes-per-sec {cap} < {MIN_NET_BANDWIDTH_BYTES_PER_SEC} (0: no cap)"));
        }
        Ok(())
    }

    /// True when it injects nothing.
    pub fn is_off(&self) -> bool {
        self.delay_ms == 0 && self.loss_rate == 0.0 && self.bandwidth_bytes_per_sec == 0
    }
}

/// The network faults in force on one node, shared by its transport and its admin API.
#[derive(Debug)]
pub struct NetFaults {
    state: Mutex<(NetFaultConfig, SmallRng)>,
    /// Some fault is set (the transport's fast path reads only this).
    active: AtomicBool,
}

impl Default for NetFaults {
    fn default() -> Self {
        NetFaults {
            state: Mutex::new((NetFaultConfig::default(), SmallRng::seed_from_u64(0))),
            active: AtomicBool::new(false),
        }
    }
}

impl NetFaults {
    /// The configuration in force.
    pub fn config(&self) -> NetFaultConfig {
        self.lock().0
    }

    /// Replaces the configuration (validated first).
    pub fn set(&self, config: NetFaultConfig) -> Result<()> {
        config.validate()?;
        *self.lock() = (config, SmallRng::seed_from_u64(config.seed));
        self.active.store(!config.is_off(), Ordering::Release);
        Ok(())
    }

    /// Removes every fault.
    pub fn clear(&self) {
        self.lock().0 = NetFaultConfig::default();
        self.active.store(false, Ordering::Release);
    }

    fn active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Draws whether an envelope queued now is lost.
    pub(crate) fn drops(&self) -> bool {
        if !self.active() {
            return false;
        }
        let mut state = self.lock();
        let rate = state.0.loss_rate;
        rate > 0.0 && state.1.random_bool(rate)
    }

    /// For one request to a peer sent now: `None` when it is lost, else the delay before it
    /// leaves.
    pub fn draw_request(&self) -> Option<Duration> {
        if !self.active() {
            return Some(Duration::ZERO);
        }
        let mut state = self.lock();
        let (rate, delay_ms) = (state.0.loss_rate, state.0.delay_ms);
        if rate > 0.0 && state.1.random_bool(rate) {
            return None;
        }
        Some(Duration::from_millis(delay_ms))
    }

    /// When an envelope queued at `queued_at` may leave.
    pub(crate) fn due(&self, queued_at: Instant) -> Instant {
        if !self.active() {
            return queued_at;
        }
        queued_at + Duration::from_millis(self.lock().0.delay_ms)
    }

    /// The silence a link keeps after sending a frame of `bytes` (the bandwidth cap).
    pub(crate) fn pace(&self, bytes: usize) -> Duration {
        if !self.active() {
            return Duration::ZERO;
        }
        match self.lock().0.bandwidth_bytes_per_sec {
            0 => Duration::ZERO,
            cap => Duration::from_secs_f64(bytes as f64 / cap as f64),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (NetFaultConfig, SmallRng)> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_and_off_by_default() {
        let faults = NetFaults::default();
        assert!(faults.config().is_off());
        assert!(!faults.drops() && faults.pace(1 << 20) == Duration::ZERO);
        for bad in [
            NetFaultConfig { delay_ms: MAX_NET_DELAY_MS + 1, ..Default::default() },
            NetFaultConfig { loss_rate: 1.5, ..Default::default() },
            NetFaultConfig { bandwidth_bytes_per_sec: 1, ..Default::default() },
        ] {
            assert!(faults.set(bad).is_err(), "{bad:?}");
        }
        assert!(faults.config().is_off(), "a refused configuration changes nothing");
    }

    /// A node's requests to its peers take the links' delay and loss too.
    #[test]
    fn requests_to_peers_draw_the_same_delay_and_loss() {
        let faults = NetFaults::default();
        assert_eq!(faults.draw_request(), Some(Duration::ZERO), "off: no delay, nothing lost");
        faults.set(NetFaultConfig { delay_ms: 30, ..Default::default() }).expect("valid");
        assert_eq!(faults.draw_request(), Some(Duration::from_millis(30)));
        faults.set(NetFaultConfig { delay_ms: 30, loss_rate: 0.5, seed: 3, ..Default::default() }).expect("valid");
        let lost = (0..10_000).filter(|_| faults.draw_request().is_none()).count();
        assert!((4_500..5_500).contains(&lost), "about half lost: {lost}");
        faults.clear();
        assert_eq!(faults.draw_request(), Some(Duration::ZERO));
    }

    #[test]
    fn loss_delay_and_pace_follow_the_configuration() {
        let faults = NetFaults::default();
        let cfg = NetFaultConfig { delay_ms: 40, loss_rate: 0.25, bandwidth_bytes_per_sec: 1 << 20, seed: 7 };
        faults.set(cfg).expect("valid");
        let lost = (0..10_000).filter(|_| faults.drops()).count();
        assert!((2_200..2_800).contains(&lost), "about a quarter lost: {lost}");
        let now = Instant::now();
        assert_eq!(faults.due(now), now + Duration::from_millis(40));
        assert_eq!(faults.pace(512 << 10), Duration::from_millis(500));
        // The same seed replays the same draws.
        faults.set(cfg).expect("valid");
        let first: Vec<bool> = (0..64).map(|_| faults.drops()).collect();
        faults.set(cfg).expect("valid");
        assert_eq!(first, (0..64).map(|_| faults.drops()).collect::<Vec<_>>());
        faults.clear();
        assert!(faults.config().is_off() && !faults.drops());
    }
}
