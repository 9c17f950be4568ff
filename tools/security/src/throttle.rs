//! Failed authentications slow their sender down: each failure from one source waits longer
//! before it is answered ([`presage_client::net::auth_failure_delay`], the native port's
//! schedule), so that guessing a password or token costs time. Sources are tracked in a bounded map
//! ([`MAX_TRACKED_SOURCES`], the stalest dropped first); a success or
//! [`FORGET_AFTER`] without failures clears a source.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sources tracked at once.
pub const MAX_TRACKED_SOURCES: usize = 4_096;
/// A source without failures for this long starts afresh.
pub const FORGET_AFTER: Duration = Duration::from_secs(600);

/// Failures per source address.
#[derive(Debug, Default)]
pub struct AuthThrottle {
    sources: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl AuthThrottle {
    /// Records a failure from `source`; returns how long to wait before answering it.
    pub fn failed(&self, source: IpAddr) -> Duration {
        let now = Instant::now();
        let mut sources = self.sources.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !sources.contains_key(&source) && sources.len() >= MAX_TRACKED_SOURCES {
            sources.retain(|_, (_, at)| now.duration_since(*at) < FORGET_AFTER);
            if sources.len() >= MAX_TRACKED_SOURCES {
                let stalest = sources.iter().min_by_key(|(_, (_, at))| *at).map(|(ip, _)| *ip);
                if let Some(ip) = stalest {
                    sources.remove(&ip);
                }
            }
        }
        let entry = sources.entry(source).or_insert((0, now));
        if now.duration_since(entry.1) >= FORGET_AFTER {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        presage_client::net::auth_failure_delay(entry.0)
    }

    /// A success from `source` clears its failures.
    pub fn succeeded(&self, source: IpAddr) {
        self.sources.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&source);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_per_source_and_a_success_resets_them() {
        let t = AuthThrottle::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().expect("ip"), "10.0.0.2".parse().expect("ip"));
        let delays: Vec<u64> = (0..8).map(|_| t.failed(a).as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000]);
        assert_eq!(t.failed(b), Duration::from_millis(100), "per source");
        t.succeeded(a);
        assert_eq!(t.failed(a), Duration::from_millis(100));
        for i in 0..(MAX_TRACKED_SOURCES as u32 + 10) {
            t.failed(IpAddr::from(i.to_be_bytes()));
        }
        assert!(t.sources.lock().expect("lock").len() <= MAX_TRACKED_SOURCES, "bounded");
    }
}
