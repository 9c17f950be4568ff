//! Predicted load (seeds 001 and 002): every shard's load as a time series of fixed buckets,
//! and its forecast over a horizon by exponential smoothing.
//!
//! - **Series**: the leader's reports of a shard's load score ([`crate::ShardLoad::score`])
//!   are averaged per bucket of `interval_ms`; at most `max_points` buckets are kept (f32).
//!   A split divides the parent's history between its halves in proportion to the requests
//!   sampled on either side of the split key (half each without samples), a merge adds the
//!   source's history to the target's. Each series is persisted in the meta shard
//!   ([`SeriesRecord`]) when a bucket of it closes (at most `MAX_HISTORY_WRITES_PER_ROUND` per
//!   round, `crate::manager`), so a new manager forecasts on from its predecessor's history; a
//!   gap while no manager ran repeats the last bucket.
//! - **Model**: additive Holt-Winters with a damped trend once the series holds two whole
//!   seasons (`season_ms`), else Holt's damped trend alone. The smoothing weights are fixed
//!   ([`ALPHA`], [`BETA`], [`GAMMA`], [`PHI`]): the same model for every series, so that the
//!   shard manager's round stays linear in the number of shards. A maintained Rust crate with
//!   seasonal exponential smoothing does not exist (augurs-ets has no seasonal models yet),
//!   so the few lines of the recurrences are here.
//! - **Forecast**: the bucket values over the horizon, never below zero nor above twice the
//!   highest bucket seen (a trend fitted to one step up must not run away); its peak is what
//!   the policies act on. A series shorter than [`MIN_POINTS`] forecasts its smoothed load now
//!   flat.
//! - **Units**: a shard's *heat* ([`crate::ShardLoad::split_heat`]): requests per second, or
//!   its bytes per second scaled so that the byte threshold counts as the request threshold,
//!   whichever is hotter; so "forecast to pass the load-split threshold" means either one.
//!
//! Pure: time comes in as `now_ms`.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Weight of a new observation in the level.
pub const ALPHA: f64 = 0.3;
/// Weight of a new slope in the trend.
pub const BETA: f64 = 0.05;
/// Weight of a new observation in its season slot (a recurring peak is learnt to 75% in two
/// seasons).
pub const GAMMA: f64 = 0.5;
/// Damping of the trend per bucket ahead (a trend never runs away over a long horizon).
pub const PHI: f64 = 0.9;
/// Buckets a series needs before it forecasts more than its last value.
pub const MIN_POINTS: usize = 4;

/// One shard's (or node's) load per bucket.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    /// Completed buckets, oldest first; the last one ends at `bucket_start_ms`.
    points: VecDeque<f32>,
    /// Start of the bucket being filled, ms (`None`: nothing recorded yet).
    bucket_start_ms: Option<u64>,
    /// Sum and count of the observations in the bucket being filled.
    sum: f64,
    count: u32,
    /// The shard epoch version this history was last rescaled for (a split halves it once).
    pub(crate) version: u64,
    /// The forecast made when the last bucket closed ([`Series::refit`]).
    ahead: Vec<f32>,
    /// The highest forecast bucket over the next whole season (at least the horizon): a
    /// shard hot again later in the season is not merged in between ([`Series::season_peak`]).
    season_peak: f32,
    /// An exponentially weighted mean of every report ([`SMOOTHING`]): the load now, without
    /// a second's noise.
    smoothed: Option<f64>,
}

/// Weight of one report in [`Series::current`] (about ten reports' memory).
pub const SMOOTHING: f64 = 0.1;

/// A shard's load history as the meta shard keeps it (`crate::meta`): written when one of its
/// buckets closes (a few per round), read back by the next manager, which forecasts on from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesRecord {
    /// The shard.
    pub shard: u64,
    /// The epoch version the history was last divided for.
    pub version: u64,
    /// Start of the bucket open when it was written, ms.
    pub bucket_start_ms: Option<u64>,
    /// Completed buckets, oldest first.
    pub points: Vec<f32>,
}

impl Series {
    /// Records `value` observed at `now_ms` into buckets of `interval_ms`, keeping at most
    /// `max_points` buckets; buckets with no observation repeat the previous value. True when
    /// a bucket closed (time to [`Series::refit`]).
    pub fn record(&mut self, now_ms: u64, value: f64, interval_ms: u64, max_points: usize) -> bool {
        debug_assert!(interval_ms > 0 && max_points > 0);
        let value = if value.is_finite() { value.max(0.0) } else { 0.0 };
        let start = now_ms - now_ms % interval_ms;
        let mut closed = false;
        match self.bucket_start_ms {
            None => self.bucket_start_ms = Some(start),
            Some(open) if start > open => {
                let mean = if self.count > 0 { self.sum / f64::from(self.count) } else { self.last().unwrap_or(0.0) };
                // Buckets skipped (no report) repeat the mean: at most a whole series' worth.
                let buckets = ((start - open) / interval_ms).min(max_points as u64);
                for _ in 0..buckets {
                    self.push(mean as f32, max_points);
                }
                self.bucket_start_ms = Some(start);
                self.sum = 0.0;
                self.count = 0;
                closed = true;
            }
            Some(_) => {}
        }
        self.sum += value;
        self.count = self.count.saturating_add(1);
        self.smoothed = Some(self.smoothed.map_or(value, |m| m + SMOOTHING * (value - m)));
        closed
    }

    /// The history as persisted.
    pub fn to_record(&self, shard: u64) -> SeriesRecord {
        SeriesRecord {
            shard,
            version: self.version,
            bucket_start_ms: self.bucket_start_ms,
            points: self.points.iter().copied().collect(),
        }
    }

    /// A history read back (its newest `max_points` buckets; non-finite or negative values
    /// read as 0), refitted. The bucket open when it was written starts empty: the first
    /// report after a gap repeats the last bucket's value over the buckets missed.
    pub fn from_record(r: &SeriesRecord, max_points: usize, season: usize, steps: usize) -> Series {
        let skip = r.points.len().saturating_sub(max_points);
        let clean = |v: f32| if v.is_finite() { v.max(0.0) } else { 0.0 };
        let mut s = Series {
            points: r.points.iter().skip(skip).map(|v| clean(*v)).collect(),
            bucket_start_ms: r.bucket_start_ms,
            version: r.version,
            ..Series::default()
        };
        s.refit(season, steps);
        s
    }

    /// Forecasts the next `steps` buckets (season of `season` buckets) and keeps the result
    /// until the next bucket closes: the policies read it every round at no cost. The
    /// forecast runs on over a whole season for [`Series::season_peak`].
    pub fn refit(&mut self, season: usize, steps: usize) {
        let y: Vec<f64> = self.points.iter().map(|v| f64::from(*v)).collect();
        let mut ahead: Vec<f32> = holt_winters(&y, season, steps.max(season))
            .map(|f| f.into_iter().map(|v| v as f32).collect())
            .unwrap_or_default();
        self.season_peak = ahead.iter().copied().fold(0.0, f32::max);
        ahead.truncate(steps);
        self.ahead = ahead;
    }

    /// The forecast [`Series::refit`] made (empty: too little history).
    pub fn ahead(&self) -> impl Iterator<Item = f64> + '_ {
        self.ahead.iter().map(|v| f64::from(*v))
    }

    /// The highest forecast bucket over the next season (or the horizon, if longer); 0
    /// without enough history.
    pub fn season_peak(&self) -> f64 {
        f64::from(self.season_peak)
    }

    fn push(&mut self, v: f32, max_points: usize) {
        if self.points.len() >= max_points {
            self.points.pop_front();
        }
        self.points.push_back(v);
    }

    /// The load now: the smoothed mean of the reports ([`SMOOTHING`]).
    pub fn current(&self) -> Option<f64> {
        self.smoothed.or_else(|| self.last())
    }

    fn last(&self) -> Option<f64> {
        self.points.back().map(|v| f64::from(*v))
    }

    /// Start of the bucket being filled (the last report's), ms.
    pub fn open_bucket_ms(&self) -> Option<u64> {
        self.bucket_start_ms
    }

    /// Completed buckets.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// No completed bucket yet.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Multiplies the history by `factor` (a split's halves each take half).
    pub fn scale(&mut self, factor: f64) {
        for v in self.points.iter_mut().chain(self.ahead.iter_mut()) {
            *v = (f64::from(*v) * factor) as f32;
        }
        self.season_peak = (f64::from(self.season_peak) * factor) as f32;
        self.sum *= factor;
        self.smoothed = self.smoothed.map(|m| m * factor);
    }

    /// Adds `other`'s history to this one, bucket by bucket from the newest, keeping `other`'s
    /// older buckets where this one is shorter (a merge).
    pub fn absorb(&mut self, other: &Series) {
        let n = self.points.len().min(other.points.len());
        let (mine, theirs) = (self.points.len(), other.points.len());
        for i in 0..n {
            self.points[mine - 1 - i] += other.points[theirs - 1 - i];
        }
        // The source's older buckets (the target's history is shorter): kept, so that a
        // merge into a young shard does not lose the source's seasons.
        for v in other.points.iter().take(theirs.saturating_sub(mine)).rev() {
            self.points.push_front(*v);
        }
        if self.ahead.len() < other.ahead.len() {
            self.ahead.resize(other.ahead.len(), 0.0);
        }
        for (a, b) in self.ahead.iter_mut().zip(&other.ahead) {
            *a += *b;
        }
        self.season_peak += other.season_peak;
        if self.bucket_start_ms.is_none() {
            self.bucket_start_ms = other.bucket_start_ms;
        }
        if other.count > 0 {
            let theirs_now = other.sum / f64::from(other.count);
            let mine_now = if self.count > 0 { self.sum / f64::from(self.count) } else { 0.0 };
            self.sum = (mine_now + theirs_now) * f64::from(self.count.max(1));
            self.count = self.count.max(1);
        }
        if let Some(theirs) = other.smoothed {
            self.smoothed = Some(self.smoothed.unwrap_or(0.0) + theirs);
        }
    }
}

/// Additive Holt-Winters with a damped trend over `y`, `steps` ahead; Holt's damped trend
/// alone when `y` holds fewer than two seasons; `None` below [`MIN_POINTS`].
pub fn holt_winters(y: &[f64], season: usize, steps: usize) -> Option<Vec<f64>> {
    if y.len() < MIN_POINTS {
        return None;
    }
    let seasonal = season >= 2 && y.len() >= 2 * season;
    let m = if seasonal { season } else { 1 };
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let (mut level, mut trend, mut slots, start) = if seasonal {
        let (a, b) = (mean(&y[..m]), mean(&y[m..2 * m]));
        let slots: Vec<f64> = y[..m].iter().map(|v| v - a).collect();
        (a, (b - a) / m as f64, slots, m)
    } else {
        (y[0], y[1] - y[0], vec![0.0], 1)
    };
    for (t, &obs) in y.iter().enumerate().skip(start) {
        let slot = t % m;
        let s = if seasonal { slots[slot] } else { 0.0 };
        let previous = level;
        level = ALPHA * (obs - s) + (1.0 - ALPHA) * (previous + PHI * trend);
        trend = BETA * (level - previous) + (1.0 - BETA) * PHI * trend;
        if seasonal {
            slots[slot] = GAMMA * (obs - level) + (1.0 - GAMMA) * s;
        }
    }
    // A trend extrapolated from a step in the load must not forecast more than twice the
    // highest load ever seen.
    let ceiling = 2.0 * y.iter().copied().fold(0.0, f64::max);
    let mut out = Vec::with_capacity(steps);
    let mut damped = 0.0;
    let mut phi_h = 1.0;
    for h in 1..=steps {
        phi_h *= PHI;
        damped += phi_h;
        let s = if seasonal { slots[(y.len() + h - 1) % m] } else { 0.0 };
        out.push((level + damped * trend + s).clamp(0.0, ceiling));
    }
    Some(out)
}

/// A forecast of one shard, node or region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forecast {
    /// Load score now (requests per second, 64 KiB moved counting as one more request).
    pub now: f64,
    /// Highest forecast bucket within the horizon.
    pub peak: f64,
    /// When that bucket starts, Unix ms.
    pub peak_at_ms: u64,
    /// Buckets of history behind the forecast.
    pub points: usize,
    /// Seasonality was used (two whole seasons of history).
    pub seasonal: bool,
}

impl Forecast {
    /// From forecast buckets, the first starting at `first_bucket_ms` (the one open now).
    pub fn from_buckets(
        now: f64,
        values: impl IntoIterator<Item = f64>,
        first_bucket_ms: u64,
        interval_ms: u64,
        points: usize,
        seasonal: bool,
    ) -> Self {
        let (i, peak) =
            values.into_iter().enumerate().fold((0, now), |best, (i, v)| if v > best.1 { (i, v) } else { best });
        let peak_at_ms = if peak > now { first_bucket_ms + i as u64 * interval_ms } else { first_bucket_ms };
        Forecast { now, peak: peak.max(now), peak_at_ms, points, seasonal }
    }
}

/// A node's or a region's forecast: the sum of the shards it leads, bucket by bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlaceForecast {
    /// The node (`None`: the whole region).
    pub node: Option<u64>,
    /// The region.
    pub region: String,
    /// Its forecast.
    pub forecast: Forecast,
    /// The load prediction score: its forecast peak over the mean peak of its peers (nodes,
    /// or regions); above 1 it is forecast hotter than average.
    pub score: f64,
}

/// One shard's forecast.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardForecast {
    /// The shard.
    pub shard: u64,
    /// Its leader (whose node carries the load).
    pub leader: Option<u64>,
    /// Its forecast.
    pub forecast: Forecast,
}

/// What the forecasts advise (acted on when `forecast-balance` is on).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "action")]
pub enum Recommendation {
    /// Split the shard before its load passes the load-split threshold.
    Split {
        /// The shard.
        shard: u64,
        /// Why.
        why: String,
    },
    /// Move the shard's leadership to another voter.
    MoveLeader {
        /// The shard.
        shard: u64,
        /// Its leader now.
        from: Option<u64>,
        /// The voter to lead it.
        to: u64,
        /// Why.
        why: String,
    },
    /// Keep the shard split: cold now, forecast hot within the horizon or later in the season.
    KeepSplit {
        /// The shard.
        shard: u64,
        /// Why.
        why: String,
    },
}

/// `presage-ctl forecast`: every region and node, the hottest shards, and the advice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForecastReport {
    /// When it was made, Unix ms.
    pub now_ms: u64,
    /// Bucket of the history, ms.
    pub interval_ms: u64,
    /// How far ahead, ms.
    pub horizon_ms: u64,
    /// The season, ms.
    pub season_ms: u64,
    /// The policies act on the forecasts.
    pub acting: bool,
    /// Regions, hottest forecast first.
    pub regions: Vec<PlaceForecast>,
    /// Nodes, hottest forecast first.
    pub nodes: Vec<PlaceForecast>,
    /// The shards with the highest forecast peaks, hottest first.
    pub shards: Vec<ShardForecast>,
    /// What the forecasts advise.
    pub recommendations: Vec<Recommendation>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_average_their_reports_and_gaps_repeat_the_last_value() {
        let mut s = Series::default();
        for (t, v) in [(0, 10.0), (500, 20.0), (1_000, 40.0), (3_000, 8.0)] {
            s.record(t, v, 1_000, 3);
        }
        // [0,1000): 15; [1000,2000): 40; [2000,3000): no report, repeats 40; [3000,..) open.
        assert_eq!(s.points.iter().copied().collect::<Vec<_>>(), [15.0, 40.0, 40.0]);
        let smoothed = s.current().expect("reports");
        assert!(smoothed > 8.0 && smoothed < 40.0, "smoothed: {smoothed}");
        s.record(4_000, 1.0, 1_000, 3);
        assert_eq!(s.len(), 3, "bounded");
    }

    #[test]
    fn a_flat_series_forecasts_flat_and_a_trend_continues_damped() {
        let flat = vec![50.0; 30];
        let f = holt_winters(&flat, 10, 5).expect("enough points");
        assert!(f.iter().all(|v| (v - 50.0).abs() < 1e-6), "{f:?}");
        let rising: Vec<f64> = (0..30).map(|i| 10.0 + 2.0 * f64::from(i)).collect();
        let f = holt_winters(&rising, 0, 10).expect("enough points");
        assert!(f[0] > 60.0 && f[9] > f[0], "keeps rising: {f:?}");
        assert!(f[9] - f[8] < f[1] - f[0], "damped: {f:?}");
        assert!(holt_winters(&[1.0, 2.0], 0, 3).is_none(), "too short");
    }

    #[test]
    fn a_recurring_spike_is_forecast_before_it_comes_again() {
        // A season of 12 buckets: quiet at 10, a spike of 200 in buckets 8 and 9.
        let day = |i: usize| if i % 12 == 8 || i % 12 == 9 { 200.0 } else { 10.0 };
        let y: Vec<f64> = (0..36).map(day).collect(); // three seasons, ending before bucket 36
        let f = holt_winters(&y, 12, 12).expect("enough points");
        // Buckets 44 and 45 are 9 and 10 steps ahead (indices 8 and 9).
        let (peak_step, peak) = f.iter().enumerate().fold((0, 0.0), |b, (i, v)| if *v > b.1 { (i, *v) } else { b });
        assert!(peak > 100.0, "the spike is foreseen: {f:?}");
        assert!(peak_step == 8 || peak_step == 9, "at its time: step {peak_step} of {f:?}");
        assert!(f[0] < 60.0, "quiet now: {f:?}");
        // Without seasonality (one season only) nothing is foreseen.
        let f = holt_winters(&y[..14], 12, 12).expect("enough points");
        assert!(f.iter().all(|v| *v < 150.0), "{f:?}");
    }

    #[test]
    fn the_season_peak_sees_a_spike_beyond_the_horizon() {
        let day = |i: usize| if i % 12 == 8 || i % 12 == 9 { 200.0 } else { 10.0 };
        let mut s = Series::default();
        // Three seasons of 1-s buckets, then bucket 36 opens: the spike is 8 steps away.
        for t in 0..=36u64 {
            s.record(t * 1_000, day(t as usize), 1_000, 100);
        }
        s.refit(12, 3);
        assert_eq!(s.ahead().count(), 3, "the horizon's buckets");
        assert!(s.ahead().all(|v| v < 60.0), "quiet within the horizon: {:?}", s.ahead().collect::<Vec<_>>());
        assert!(s.season_peak() > 100.0, "the spike later in the season: {}", s.season_peak());
        let before = s.season_peak();
        s.scale(0.5);
        assert!((s.season_peak() - before / 2.0).abs() < 1e-3, "a split halves it");
    }

    #[test]
    fn a_split_halves_a_history_and_a_merge_adds_one() {
        let mut a = Series::default();
        let mut b = Series::default();
        for t in 0..5u64 {
            a.record(t * 1_000, 100.0, 1_000, 10);
            b.record(t * 1_000, 10.0, 1_000, 10);
        }
        a.scale(0.5);
        assert_eq!(a.points.back().copied(), Some(50.0));
        a.absorb(&b);
        assert_eq!(a.points.iter().copied().collect::<Vec<_>>(), [60.0; 4]);
        assert_eq!(a.current(), Some(60.0), "the smoothed loads add up too");
        // A young target keeps the source's older buckets.
        let mut young = Series::default();
        young.record(3_000, 5.0, 1_000, 10);
        young.record(4_000, 5.0, 1_000, 10);
        young.absorb(&b);
        assert_eq!(young.points.iter().copied().collect::<Vec<_>>(), [10.0, 10.0, 10.0, 15.0]);
        let f = Forecast::from_buckets(60.0, [70.0, 90.0, 80.0], 5_000, 1_000, 4, false);
        assert_eq!((f.peak, f.peak_at_ms), (90.0, 6_000));
    }
}
