//! Load statistics per shard and the load-split key choice (design.md §4).
//!
//! A shard's leader counts every request it serves in a [`LoadRecorder`] and keeps a
//! reservoir sample of the requests' key spans (a point request is the span of its key).
//! Each heartbeat takes the recorder's [`LoadReport`]; the shard manager keeps the samples of
//! the last load-split window and, once a shard stayed hot for the whole window, asks
//! [`choose_split_key`] for the key that best divides the sampled requests.
//!
//! `LoadRecorder` (per-shard counters and an Algorithm-R reservoir of request key spans),
//! `LoadReport`, `ShardLoad` rates and score, `choose_split_key` (design.md §4: smallest balance +
//! contained share among evenly spaced sampled candidates).

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// The key span of one sampled request: a point (`end` is `None`) or a scan `[start, end)`
/// (an `end` of `Some(empty)` means "to the end of the key space").
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KeySpan {
    /// The key, or the scan's first key.
    pub start: Vec<u8>,
    /// For a scan: its exclusive end (empty: unbounded).
    pub end: Option<Vec<u8>>,
}

impl KeySpan {
    /// A single-key request.
    pub fn point(key: &[u8]) -> Self {
        KeySpan { start: key.to_vec(), end: None }
    }

    /// Where `candidate` would put this request if the shard split there.
    fn side(&self, candidate: &[u8]) -> Side {
        match &self.end {
            None if self.start.as_slice() < candidate => Side::Left,
            None => Side::Right,
            Some(end) => {
                if self.start.as_slice() >= candidate {
                    Side::Right
                } else if !end.is_empty() && end.as_slice() <= candidate {
                    Side::Left
                } else {
                    Side::Both
                }
            }
        }
    }
}

enum Side {
    Left,
    Right,
    Both,
}

/// Requests a leader served for a shard during one report interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Length of the interval the counts cover, in ms.
    pub interval_ms: u64,
    /// Read requests.
    pub read_ops: u64,
    /// Write requests.
    pub write_ops: u64,
    /// Bytes read (keys and values returned).
    pub read_bytes: u64,
    /// Bytes written (keys and values).
    pub write_bytes: u64,
    /// A uniform sample of the requests' key spans.
    pub samples: Vec<KeySpan>,
    /// Requests the leader failed to serve: timed out, or refused by the shard for a reason
    /// other than routing (a request sent to a non-leader or with a stale epoch is not counted).
    #[serde(default)]
    pub errors: u64,
    /// Served requests by latency on the node, bucket `i` counting those under
    /// `LATENCY_BUCKET_FIRST_US << i` (the last bucket: the rest); at most
    /// [`LATENCY_BUCKETS`] buckets.
    #[serde(default)]
    pub latency_buckets: Vec<u32>,
}

impl LoadReport {
    /// Adds `other`'s requests (reads a follower served) to this report at `other`'s rate
    /// over this report's interval: counts, errors and latencies scaled by the ratio of the
    /// intervals and added, samples appended up to `max_samples` in all. An `other` without
    /// an interval adds nothing.
    pub fn absorb(&mut self, other: &LoadReport, max_samples: usize) {
        if other.interval_ms == 0 {
            return;
        }
        let ratio = self.interval_ms as f64 / other.interval_ms as f64;
        let scaled = |n: u64| (n as f64 * ratio).round() as u64;
        self.read_ops = self.read_ops.saturating_add(scaled(other.read_ops));
        self.write_ops = self.write_ops.saturating_add(scaled(other.write_ops));
        self.read_bytes = self.read_bytes.saturating_add(scaled(other.read_bytes));
        self.write_bytes = self.write_bytes.saturating_add(scaled(other.write_bytes));
        self.errors = self.errors.saturating_add(scaled(other.errors));
        let buckets = self.latency_buckets.len().max(other.latency_buckets.len()).min(LATENCY_BUCKETS);
        self.latency_buckets.resize(buckets, 0);
        for (mine, theirs) in self.latency_buckets.iter_mut().zip(&other.latency_buckets) {
            *mine = mine.saturating_add(u32::try_from(scaled(u64::from(*theirs))).unwrap_or(u32::MAX));
        }
        let room = max_samples.saturating_sub(self.samples.len());
        self.samples.extend(other.samples.iter().take(room).cloned());
    }
}

/// Latency buckets per report: powers of two from 64 µs, the last one unbounded (64 µs to
/// 8.4 s, then above).
pub const LATENCY_BUCKETS: usize = 19;
/// The first latency bucket's upper bound, µs.
pub const LATENCY_BUCKET_FIRST_US: u64 = 64;

/// The bucket of a request that took `us` microseconds.
pub fn latency_bucket(us: u64) -> usize {
    let mut i = 0;
    while i + 1 < LATENCY_BUCKETS && us >= LATENCY_BUCKET_FIRST_US << i {
        i += 1;
    }
    i
}

/// The 99th percentile of `buckets`, ms: the upper bound of the bucket holding it (twice the
/// previous bound for the unbounded last one); 0 with no request.
pub fn latency_p99_ms(buckets: &[u32]) -> f64 {
    let total: u64 = buckets.iter().map(|c| u64::from(*c)).sum();
    if total == 0 {
        return 0.0;
    }
    let rank = total - total / 100; // the request at or above which 1% remain
    let mut seen = 0u64;
    for (i, c) in buckets.iter().enumerate().take(LATENCY_BUCKETS) {
        seen += u64::from(*c);
        if seen >= rank {
            return (LATENCY_BUCKET_FIRST_US << i) as f64 / 1_000.0;
        }
    }
    (LATENCY_BUCKET_FIRST_US << (LATENCY_BUCKETS - 1)) as f64 / 1_000.0
}

/// Request rates of a shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardLoad {
    /// Reads per second.
    pub read_qps: f64,
    /// Writes per second.
    pub write_qps: f64,
    /// Bytes read per second.
    pub read_bytes_per_sec: f64,
    /// Bytes written per second.
    pub write_bytes_per_sec: f64,
    /// The served requests' 99th percentile latency on the leader, ms (to a power of two;
    /// 0 without requests).
    #[serde(default)]
    pub p99_ms: f64,
    /// Requests the leader failed per second ([`LoadReport::errors`]).
    #[serde(default)]
    pub errors_per_sec: f64,
}

impl ShardLoad {
    /// Rates of `report`; zero for an empty interval.
    pub fn from_report(report: &LoadReport) -> Self {
        if report.interval_ms == 0 {
            return ShardLoad::default();
        }
        let per_sec = 1000.0 / report.interval_ms as f64;
        ShardLoad {
            read_qps: report.read_ops as f64 * per_sec,
            write_qps: report.write_ops as f64 * per_sec,
            read_bytes_per_sec: report.read_bytes as f64 * per_sec,
            write_bytes_per_sec: report.write_bytes as f64 * per_sec,
            p99_ms: latency_p99_ms(&report.latency_buckets),
            errors_per_sec: report.errors as f64 * per_sec,
        }
    }

    /// Reads plus writes per second.
    pub fn qps(&self) -> f64 {
        self.read_qps + self.write_qps
    }

    /// Bytes read plus written per second.
    pub fn bytes_per_sec(&self) -> f64 {
        self.read_bytes_per_sec + self.write_bytes_per_sec
    }

    /// Requests per second, or bytes per second scaled so that `bytes_threshold` counts as
    /// `qps_threshold`, whichever is larger: what the forecasts track, so that passing
    /// `qps_threshold` means passing either load-split threshold.
    pub fn split_heat(&self, qps_threshold: f64, bytes_threshold: f64) -> f64 {
        let bytes_as_requests =
            if bytes_threshold > 0.0 { self.bytes_per_sec() * qps_threshold / bytes_threshold } else { 0.0 };
        self.qps().max(bytes_as_requests)
    }

    /// One number to balance leaders by: requests per second, where every 64 KiB moved
    /// counts as one more request (so a few huge requests weigh like many small ones).
    pub fn score(&self) -> f64 {
        self.qps() + self.bytes_per_sec() / 65_536.0
    }
}

/// Counts one shard's requests and samples their spans (kept by the shard's leader).
#[derive(Debug, Clone)]
pub struct LoadRecorder {
    report: LoadReport,
    /// Requests seen this interval (the reservoir's denominator).
    seen: u64,
    max_samples: usize,
    rng: SmallRng,
}

impl LoadRecorder {
    /// A recorder keeping at most `max_samples` spans per interval; `seed` makes the sample
    /// reproducible (the node server seeds it with the node and shard ids).
    pub fn new(max_samples: usize, seed: u64) -> Self {
        LoadRecorder { report: LoadReport::default(), seen: 0, max_samples, rng: SmallRng::seed_from_u64(seed) }
    }

    /// Counts a read of `bytes` over `span`.
    pub fn record_read(&mut self, span: KeySpan, bytes: u64) {
        self.report.read_ops += 1;
        self.report.read_bytes += bytes;
        self.sample(span);
    }

    /// Counts a write of `bytes` at `key`.
    pub fn record_write(&mut self, key: &[u8], bytes: u64) {
        self.report.write_ops += 1;
        self.report.write_bytes += bytes;
        self.sample(KeySpan::point(key));
    }

    /// Counts a request served in `us` microseconds.
    pub fn record_latency(&mut self, us: u64) {
        let buckets = &mut self.report.latency_buckets;
        if buckets.len() < LATENCY_BUCKETS {
            buckets.resize(LATENCY_BUCKETS, 0);
        }
        let b = &mut buckets[latency_bucket(us)];
        *b = b.saturating_add(1);
    }

    /// Counts a request the shard failed to serve.
    pub fn record_error(&mut self) {
        self.report.errors += 1;
    }

    /// Reservoir sampling (Algorithm R): after `n` requests each is in the sample with
    /// probability `max_samples / n`.
    fn sample(&mut self, span: KeySpan) {
        self.seen += 1;
        if self.report.samples.len() < self.max_samples {
            self.report.samples.push(span);
        } else {
            let j = self.rng.random_range(0..self.seen);
            if let Some(slot) = self.report.samples.get_mut(j as usize) {
                *slot = span;
            }
        }
    }

    /// True when nothing was recorded since the last [`LoadRecorder::take`].
    pub fn is_idle(&self) -> bool {
        self.seen == 0 && self.report.errors == 0
    }

    /// The counts of the interval that just ended (`interval_ms` long); starts a new one.
    pub fn take(&mut self, interval_ms: u64) -> LoadReport {
        self.seen = 0;
        let mut out = std::mem::take(&mut self.report);
        out.interval_ms = interval_ms;
        out
    }
}

/// How a candidate split key divides sampled requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitScore {
    /// `|left - right| / (left + right)`: 0 is a perfect halving.
    pub balance: f64,
    /// Share of the requests whose span crosses the key (they would touch both halves).
    pub contained: f64,
}

/// The load-split key (design.md §4): among up to `max_candidates` sampled keys inside
/// `(start, end)`, the one with the smallest `balance + contained`, provided its balance is
/// at most `max_balance` and its contained share at most `max_contained`.
pub fn choose_split_key(
    start: &[u8],
    end: Option<&[u8]>,
    samples: &[&KeySpan],
    max_candidates: usize,
    max_balance: f64,
    max_contained: f64,
) -> Option<(Vec<u8>, SplitScore)> {
    let mut keys: Vec<&[u8]> =
        samples.iter().map(|s| s.start.as_slice()).filter(|k| *k > start && end.is_none_or(|e| *k < e)).collect();
    keys.sort_unstable();
    keys.dedup();
    if keys.is_empty() || max_candidates == 0 {
        return None;
    }
    // Evenly spaced candidates over the distinct sampled keys.
    let step = keys.len().div_ceil(max_candidates);
    let candidates = keys.iter().step_by(step.max(1));
    let mut best: Option<(Vec<u8>, SplitScore)> = None;
    for &c in candidates {
        let (mut left, mut right, mut both) = (0u64, 0u64, 0u64);
        for s in samples {
            match s.side(c) {
                Side::Left => left += 1,
                Side::Right => right += 1,
                Side::Both => both += 1,
            }
        }
        let total = left + right + both;
        if left + right == 0 || total == 0 {
            continue;
        }
        let score = SplitScore {
            balance: left.abs_diff(right) as f64 / (left + right) as f64,
            contained: both as f64 / total as f64,
        };
        if score.balance > max_balance || score.contained > max_contained {
            continue;
        }
        if best.as_ref().is_none_or(|(_, b)| score.balance + score.contained < b.balance + b.contained) {
            best = Some((c.to_vec(), score));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_followers_report_adds_to_the_leaders_within_the_sample_bound() {
        let span = |k: &str| KeySpan::point(k.as_bytes());
        let mut leader = LoadReport {
            interval_ms: 1_000,
            read_ops: 10,
            write_ops: 5,
            samples: vec![span("a"), span("b")],
            latency_buckets: vec![1, 2],
            ..LoadReport::default()
        };
        let follower = LoadReport {
            interval_ms: 1_000,
            read_ops: 30,
            read_bytes: 300,
            errors: 1,
            samples: vec![span("c"), span("d"), span("e")],
            latency_buckets: vec![0, 1, 4],
            ..LoadReport::default()
        };
        leader.absorb(&follower, 4);
        assert_eq!((leader.read_ops, leader.write_ops, leader.read_bytes, leader.errors), (40, 5, 300, 1));
        assert_eq!(leader.interval_ms, 1_000, "the leader's interval");
        assert_eq!(leader.latency_buckets, vec![1, 3, 4]);
        assert_eq!(leader.samples, vec![span("a"), span("b"), span("c"), span("d")], "at most 4 samples");
        // A follower's report over five intervals adds its rate, not its total.
        let mut leader = LoadReport { interval_ms: 1_000, ..LoadReport::default() };
        leader.absorb(&LoadReport { interval_ms: 5_000, read_ops: 500, ..LoadReport::default() }, 4);
        assert_eq!(leader.read_ops, 100);
        leader.absorb(&LoadReport { read_ops: 7, ..LoadReport::default() }, 4);
        assert_eq!(leader.read_ops, 100, "no interval, nothing added");
    }

    #[test]
    fn reservoir_is_bounded_and_counts_everything() {
        let mut r = LoadRecorder::new(16, 7);
        for i in 0..1000u32 {
            r.record_write(&i.to_be_bytes(), 10);
            r.record_read(KeySpan::point(&i.to_be_bytes()), 5);
        }
        let rep = r.take(1000);
        assert_eq!((rep.read_ops, rep.write_ops, rep.read_bytes, rep.write_bytes), (1000, 1000, 5000, 10_000));
        assert_eq!(rep.samples.len(), 16);
        assert!(r.is_idle());
        let load = ShardLoad::from_report(&rep);
        assert_eq!(load.qps(), 2000.0);
        // Sampled from the whole interval, not just its start.
        assert!(rep.samples.iter().any(|s| s.start.as_slice() > 500u32.to_be_bytes().as_slice()));
    }

    #[test]
    fn latencies_give_a_p99_to_a_power_of_two_and_errors_a_rate() {
        let mut r = LoadRecorder::new(4, 1);
        assert!(r.is_idle());
        // 990 requests at 100 µs, 10 at 30 ms: the p99 is the fast bucket's bound.
        for _ in 0..990 {
            r.record_latency(100);
        }
        for _ in 0..10 {
            r.record_latency(30_000);
        }
        r.record_error();
        assert!(!r.is_idle(), "an error alone is something to report");
        let rep = r.take(2_000);
        assert_eq!(rep.latency_buckets.len(), LATENCY_BUCKETS);
        let load = ShardLoad::from_report(&rep);
        assert_eq!(load.p99_ms, 0.128, "100 µs is under 128 µs");
        assert_eq!(load.errors_per_sec, 0.5);
        // 2% slow: the p99 is in the slow bucket (30 ms < 32.768 ms).
        let mut buckets = vec![0u32; LATENCY_BUCKETS];
        buckets[latency_bucket(100)] = 98;
        buckets[latency_bucket(30_000)] = 2;
        assert_eq!(latency_p99_ms(&buckets), 32.768);
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS - 1, "the last bucket is unbounded");
        assert_eq!(latency_p99_ms(&[]), 0.0);
        // A report from an older node has no buckets and no errors.
        let old: LoadReport = serde_json::from_str(
            r#"{"interval_ms":1000,"read_ops":1,"write_ops":0,"read_bytes":1,"write_bytes":0,"samples":[]}"#,
        )
        .expect("decode");
        assert_eq!((old.errors, old.latency_buckets.len()), (0, 0));
    }

    #[test]
    fn split_key_halves_uniform_points() {
        let spans: Vec<KeySpan> = (0..100u8).map(|i| KeySpan::point(&[b'k', i])).collect();
        let refs: Vec<&KeySpan> = spans.iter().collect();
        let (key, score) = choose_split_key(b"", None, &refs, 20, 0.25, 0.5).expect("a key");
        assert!(score.balance <= 0.1, "{score:?}");
        assert!(key.as_slice() > b"k\x28".as_slice() && key.as_slice() < b"k\x3c".as_slice(), "{key:?}");
    }

    #[test]
    fn one_hot_key_cannot_split() {
        let spans: Vec<KeySpan> = (0..100).map(|_| KeySpan::point(b"hot")).collect();
        let refs: Vec<&KeySpan> = spans.iter().collect();
        assert_eq!(choose_split_key(b"", None, &refs, 20, 0.25, 0.5), None, "every request is on one key");
    }

    #[test]
    fn scans_crossing_every_candidate_refuse_it() {
        let spans: Vec<KeySpan> =
            (0..100u8).map(|i| KeySpan { start: vec![b'a', i], end: Some(b"z".to_vec()) }).collect();
        let refs: Vec<&KeySpan> = spans.iter().collect();
        assert_eq!(choose_split_key(b"", None, &refs, 20, 0.25, 0.5), None);
    }

    #[test]
    fn candidates_stay_inside_the_shard() {
        let spans: Vec<KeySpan> = (0..100u8).map(|i| KeySpan::point(&[i])).collect();
        let refs: Vec<&KeySpan> = spans.iter().collect();
        let (key, _) = choose_split_key(&[10], Some(&[20]), &refs, 20, 1.0, 1.0).expect("key");
        assert!(key.as_slice() > [10u8].as_slice() && key.as_slice() < [20u8].as_slice());
    }
}
