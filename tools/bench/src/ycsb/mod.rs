//! `presage-bench run`: the YCSB core workloads A–F against a bare engine, a playground or a
//! running cluster, several targets side by side in one invocation.
//!
//! This module is the workload itself, pure and seeded: the operation mixes YCSB's core
//! workloads define, the record keys, and the request distributions (uniform, scrambled
//! zipfian, latest). [`target`] runs operations against one kind of target; [`run`] runs the
//! targets in turn (its options in `options.rs`, each phase's threads and measurements in
//! `phase.rs`) and reports them side by side; [`plot`] draws the run.
//!
//! Records are single values of `value_bytes` (YCSB's ten 100-byte fields stored as one
//! value); an update rewrites the whole value.
//!
//! `presage-bench run`, the YCSB core workloads. `mod.rs` (pure, seeded): the A–F operation mixes,
//! hashed record keys, uniform / scrambled-zipfian / latest choosers (rand_distr's Zipf, exponent
//! 0.99); `target.rs`: one blocking `Target` trait over the raw engine (synced writes), a
//! playground it starts and stops, or a cluster by address (the client's futures on a shared
//! runtime); `run.rs`: the closed-loop driver (load phase, run phase; T threads; per-operation
//! hdrhistograms and a per-second series; an insert becomes readable once every earlier insert
//! finished; a phase stops when nothing succeeded for `max_failing_secs`), ratios to the first
//! target, text rendering; `plot.rs`: the SVG (plotters, no font files).

mod options;
mod phase;
pub mod plot;
pub mod run;
pub mod target;

use rand::Rng;
use rand_distr::{Distribution as _, Zipf};
use serde::{Deserialize, Serialize};

/// YCSB's zipfian constant.
pub const ZIPFIAN_EXPONENT: f64 = 0.99;
/// Items the scrambled zipfian ranks over before hashing them onto the records (YCSB's 10^10),
/// so that the hottest record's share is YCSB's, not that of a Zipf over the record count.
pub const ZIPFIAN_ITEMS: f64 = 1e10;

/// One of YCSB's core workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Update heavy: 50% reads, 50% updates.
    A,
    /// Read mostly: 95% reads, 5% updates.
    B,
    /// Read only.
    C,
    /// Read latest: 95% reads, 5% inserts, recent records most popular.
    D,
    /// Short ranges: 95% scans (1–100 records), 5% inserts.
    E,
    /// Read-modify-write: 50% reads, 50% read-modify-writes.
    F,
}

/// How operations choose their record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KeyDistribution {
    /// Every record equally likely.
    Uniform,
    /// A few records hot (Zipf, exponent 0.99), spread over the key space by a hash.
    Zipfian,
    /// The most recently inserted records hottest (Zipf over recency).
    Latest,
}

/// An operation type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// Read one record.
    Read,
    /// Rewrite one existing record.
    Update,
    /// Write a new record.
    Insert,
    /// Read up to `max_scan_len` records in key order from a chosen record.
    Scan,
    /// Read a record, then write it back changed (timed as one operation).
    #[serde(rename = "read-modify-write")]
    ReadModifyWrite,
}

impl OpKind {
    /// Every kind, in report order.
    pub const ALL: [OpKind; 5] = [OpKind::Read, OpKind::Update, OpKind::Insert, OpKind::Scan, OpKind::ReadModifyWrite];

    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Update => "update",
            OpKind::Insert => "insert",
            OpKind::Scan => "scan",
            OpKind::ReadModifyWrite => "read-modify-write",
        }
    }

    /// Position in [`OpKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A workload's operation mix and record choice.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mix {
    /// Shares of each operation, summing to 1.
    pub proportions: Vec<(OpKind, f64)>,
    /// How records are chosen.
    pub distribution: KeyDistribution,
    /// Longest scan, records (scan lengths are uniform in `1..=max_scan_len`).
    pub max_scan_len: usize,
}

impl Workload {
    /// YCSB's definition of the workload, with its default request distribution.
    pub fn mix(self) -> Mix {
        use OpKind::*;
        let (proportions, distribution) = match self {
            Workload::A => (vec![(Read, 0.5), (Update, 0.5)], KeyDistribution::Zipfian),
            Workload::B => (vec![(Read, 0.95), (Update, 0.05)], KeyDistribution::Zipfian),
            Workload::C => (vec![(Read, 1.0)], KeyDistribution::Zipfian),
            Workload::D => (vec![(Read, 0.95), (Insert, 0.05)], KeyDistribution::Latest),
            Workload::E => (vec![(Scan, 0.95), (Insert, 0.05)], KeyDistribution::Zipfian),
            Workload::F => (vec![(Read, 0.5), (ReadModifyWrite, 0.5)], KeyDistribution::Zipfian),
        };
        Mix { proportions, distribution, max_scan_len: 100 }
    }
}

impl Mix {
    /// Draws the next operation type.
    pub fn next_op(&self, rng: &mut impl Rng) -> OpKind {
        let mut x: f64 = rng.random();
        for &(kind, share) in &self.proportions {
            if x < share {
                return kind;
            }
            x -= share;
        }
        self.proportions.last().map_or(OpKind::Read, |p| p.0)
    }
}

/// FNV-1a of a record number: YCSB's hashed insert order, so that records written in
/// sequence land all over the key space (and over every shard).
pub fn fnv1a64(n: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in n.to_le_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The key of record `n`: `prefix` and its hash, zero-padded so that keys sort by hash.
pub fn record_key(prefix: &str, n: u64) -> Vec<u8> {
    format!("{prefix}{:020}", fnv1a64(n)).into_bytes()
}

/// Chooses record numbers below a count that grows as inserts finish. One per thread.
///
/// Zipfian ranks over [`ZIPFIAN_ITEMS`] and hashes the rank onto the `loaded` records: the
/// hot set stays put while inserts add records (which zipfian never picks; scans still pass
/// over them). Latest ranks over the current count, newest first (it caches the Zipf for the
/// last count).
pub struct KeyChooser {
    distribution: KeyDistribution,
    loaded: u64,
    items: Zipf<f64>,
    latest: Option<(u64, Zipf<f64>)>,
}

fn zipf(n: f64) -> Zipf<f64> {
    // n >= 1 and the exponent is positive: `new` cannot fail.
    Zipf::new(n.max(1.0), ZIPFIAN_EXPONENT).unwrap_or_else(|_| unreachable!("n >= 1, s > 0"))
}

impl KeyChooser {
    /// A chooser for `distribution` over `loaded` records and those inserted after them.
    pub fn new(distribution: KeyDistribution, loaded: u64) -> Self {
        KeyChooser { distribution, loaded: loaded.max(1), items: zipf(ZIPFIAN_ITEMS), latest: None }
    }

    /// A record number in `0..n` (`n` records exist, `n` >= the loaded count).
    pub fn choose(&mut self, n: u64, rng: &mut impl Rng) -> u64 {
        assert!(n > 0, "no record to choose from");
        match self.distribution {
            KeyDistribution::Uniform => rng.random_range(0..n),
            KeyDistribution::Zipfian => {
                let rank = self.items.sample(rng) as u64;
                fnv1a64(rank) % self.loaded.min(n)
            }
            KeyDistribution::Latest => {
                if self.latest.as_ref().is_none_or(|(count, _)| *count != n) {
                    self.latest = Some((n, zipf(n as f64)));
                }
                let (_, z) = self.latest.as_ref().unwrap_or_else(|| unreachable!("set above"));
                // A rank in 1..=n, newest first.
                n - (z.sample(rng) as u64).clamp(1, n)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn each_workload_draws_its_mix() {
        for w in [Workload::A, Workload::B, Workload::C, Workload::D, Workload::E, Workload::F] {
            let mix = w.mix();
            let total: f64 = mix.proportions.iter().map(|p| p.1).sum();
            assert!((total - 1.0).abs() < 1e-9, "{w:?}");
            let mut rng = SmallRng::seed_from_u64(7);
            let mut counts = [0u32; 5];
            let n = 100_000;
            for _ in 0..n {
                counts[mix.next_op(&mut rng).index()] += 1;
            }
            for &(kind, share) in &mix.proportions {
                let got = f64::from(counts[kind.index()]) / f64::from(n);
                assert!((got - share).abs() < 0.01, "{w:?} {kind:?}: {got} for {share}");
            }
        }
    }

    #[test]
    fn zipfian_is_skewed_and_scattered_latest_favours_new_records_uniform_is_flat() {
        let n = 10_000u64;
        let draws = 200_000;
        let mut rng = SmallRng::seed_from_u64(11);
        let hist = |d: KeyDistribution, rng: &mut SmallRng| {
            let mut c = KeyChooser::new(d, n);
            let mut h = vec![0u32; n as usize];
            for _ in 0..draws {
                let k = c.choose(n, rng);
                assert!(k < n);
                h[k as usize] += 1;
            }
            h
        };
        let z = hist(KeyDistribution::Zipfian, &mut rng);
        let hottest = z.iter().enumerate().max_by_key(|p| p.1).map(|p| p.0).expect("some");
        // Rank 1 of Zipf(10^10, 0.99) has about 4% of the mass; uniform would give 0.01%.
        let share = f64::from(z[hottest]) / f64::from(draws);
        assert!(share > 0.02 && share < 0.08, "{share}");
        // Scattered: the hottest record is not record 0 and the hot set is not one prefix.
        let hot: Vec<usize> = (0..n as usize).filter(|&i| z[i] > 1_000).collect();
        assert!(hot.len() >= 3 && hot.iter().any(|&i| i > n as usize / 2), "{hot:?}");

        let l = hist(KeyDistribution::Latest, &mut rng);
        assert!(l[n as usize - 1] > l[n as usize - 100] && l[n as usize - 100] > l[0], "recent first");

        let u = hist(KeyDistribution::Uniform, &mut rng);
        let max = *u.iter().max().expect("some");
        assert!(max < 60, "uniform: {max} draws on one record (mean 20)");
    }

    /// Inserts do not move the zipfian hot set (YCSB's scrambled zipfian has a fixed space).
    #[test]
    fn zipfian_choices_stay_put_while_records_are_inserted() {
        let draw = |n: u64| {
            let mut rng = SmallRng::seed_from_u64(5);
            let mut c = KeyChooser::new(KeyDistribution::Zipfian, 1_000);
            (0..1_000).map(|_| c.choose(n, &mut rng)).collect::<Vec<u64>>()
        };
        assert_eq!(draw(1_000), draw(1_700));
    }

    #[test]
    fn keys_are_fixed_width_hashed_and_distinct() {
        let keys: std::collections::BTreeSet<Vec<u8>> = (0..10_000).map(|i| record_key("user", i)).collect();
        assert_eq!(keys.len(), 10_000);
        assert!(keys.iter().all(|k| k.len() == 24 && k.starts_with(b"user")));
        assert_ne!(record_key("user", 0), keys.iter().next().cloned().expect("some"), "hashed order");
    }
}
