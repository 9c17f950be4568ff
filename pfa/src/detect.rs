//! Detectors over one signal's samples, fed one value at a time (one per second in a node's
//! telemetry). Each is a small state machine with a fixed memory bound:
//!
//! - [`Ewma`]: exponentially weighted level and variance; the z-score of a new value.
//! - [`Holt`]: Holt's linear exponential smoothing (level + trend) and the standardised
//!   residual of each value against the one-step forecast. Written here rather than taken
//!   from a crate: it is a dozen lines, and the forecasting crates (augurs) fit whole series
//!   offline where this needs one sample at a time in bounded memory.
//! - [`Slope`]: least-squares slope over the last `window` samples.
//! - [`Cusum`]: two-sided tabular CUSUM change-point detection on values standardised by a
//!   warm-up baseline, clipped so that one outlier cannot raise an alarm alone.
//! - [`median`]: of a node's peers' values (a node slower than most of its peers is the
//!   signal, not a slow cluster).
//!
//! One-sample-at-a-time detectors with fixed memory: `Ewma`, `Holt` (level + trend, standardised
//! forecast residual), `Slope` (least squares over a window), `Cusum` (two-sided, self-starting
//! baseline, clipped inputs, one alarm per lasting shift), `median`. The level alarm is the
//! aggregator's: a level far from a baseline that does not learn from bad values.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Exponentially weighted moving average and variance.
#[derive(Clone, Debug, PartialEq)]
pub struct Ewma {
    alpha: f64,
    mean: Option<f64>,
    var: f64,
}

impl Ewma {
    /// `alpha` in (0, 1]: the weight of each new value.
    pub fn new(alpha: f64) -> Ewma {
        assert!(alpha > 0.0 && alpha <= 1.0, "alpha {alpha}");
        Ewma { alpha, mean: None, var: 0.0 }
    }

    /// The EWMA whose weights have the centre of mass of a `span`-sample window.
    pub fn with_span(span: f64) -> Ewma {
        Ewma::new(2.0 / (span.max(1.0) + 1.0))
    }

    /// The EWMA of [`Ewma::with_span`] resumed at a known level and deviation (a baseline
    /// restored from history).
    pub fn seeded(span: f64, mean: f64, sd: f64) -> Ewma {
        Ewma { mean: Some(mean), var: sd * sd, ..Ewma::with_span(span) }
    }

    /// Take one value.
    pub fn update(&mut self, x: f64) {
        match self.mean {
            None => self.mean = Some(x),
            Some(m) => {
                let d = x - m;
                let m = m + self.alpha * d;
                self.var = (1.0 - self.alpha) * (self.var + self.alpha * d * d);
                self.mean = Some(m);
            }
        }
    }

    /// The level, once a value has been seen.
    pub fn mean(&self) -> Option<f64> {
        self.mean
    }

    /// The standard deviation.
    pub fn sd(&self) -> f64 {
        self.var.sqrt()
    }

    /// How many standard deviations `x` is from the level (`sd` floored at `min_sd`).
    pub fn z(&self, x: f64, min_sd: f64) -> f64 {
        self.mean.map_or(0.0, |m| (x - m) / self.sd().max(min_sd))
    }
}

/// Holt's linear exponential smoothing with a residual scale.
#[derive(Clone, Debug, PartialEq)]
pub struct Holt {
    alpha: f64,
    beta: f64,
    level: Option<f64>,
    trend: f64,
    residual: Ewma,
    seen: u64,
}

impl Holt {
    /// Level weight `alpha`, trend weight `beta`, both in (0, 1].
    pub fn new(alpha: f64, beta: f64) -> Holt {
        assert!(alpha > 0.0 && alpha <= 1.0 && beta > 0.0 && beta <= 1.0);
        Holt { alpha, beta, level: None, trend: 0.0, residual: Ewma::with_span(60.0), seen: 0 }
    }

    /// The current trend, per sample.
    pub fn trend(&self) -> f64 {
        self.trend
    }

    /// Take one value; returns its residual against the forecast in residual standard
    /// deviations (`min_sd` floors the scale), after a warm-up of 10 samples.
    pub fn update(&mut self, x: f64, min_sd: f64) -> Option<f64> {
        self.seen += 1;
        let Some(level) = self.level else {
            self.level = Some(x);
            return None;
        };
        let forecast = level + self.trend;
        let r = x - forecast;
        let z = (self.seen > 10).then(|| r / self.residual.sd().max(min_sd));
        self.residual.update(r);
        // The residual EWMA's mean drifts to 0 for an unbiased forecast; its sd is the scale.
        let new_level = self.alpha * x + (1.0 - self.alpha) * forecast;
        self.trend = self.beta * (new_level - level) + (1.0 - self.beta) * self.trend;
        self.level = Some(new_level);
        z
    }
}

/// Least-squares slope of the last `window` samples, per sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Slope {
    window: usize,
    samples: VecDeque<f64>,
}

impl Slope {
    /// A window of `window` >= 2 samples.
    pub fn new(window: usize) -> Slope {
        assert!(window >= 2, "a slope needs two samples");
        Slope { window, samples: VecDeque::with_capacity(window) }
    }

    /// Take one value.
    pub fn update(&mut self, x: f64) {
        if self.samples.len() == self.window {
            self.samples.pop_front();
        }
        self.samples.push_back(x);
    }

    /// The slope, once two samples are in (O(window)).
    pub fn slope(&self) -> Option<f64> {
        let n = self.samples.len();
        if n < 2 {
            return None;
        }
        let nf = n as f64;
        let mean_t = (nf - 1.0) / 2.0;
        let mean_x = self.samples.iter().sum::<f64>() / nf;
        let (mut num, mut den) = (0.0, 0.0);
        for (t, x) in self.samples.iter().enumerate() {
            let dt = t as f64 - mean_t;
            num += dt * (x - mean_x);
            den += dt * dt;
        }
        Some(num / den)
    }
}

/// Which way a signal moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// Higher than its baseline.
    Up,
    /// Lower than its baseline.
    Down,
}

/// CUSUM settings, in baseline standard deviations.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CusumConfig {
    /// Allowance: half the smallest shift worth finding.
    pub k: f64,
    /// Decision interval: an alarm when a cumulative sum passes it.
    pub h: f64,
    /// Samples that set the baseline's mean and deviation before the first test.
    pub warmup_samples: u32,
    /// After the warm-up the baseline keeps learning from samples taken while both sums are
    /// under `h / 2` (in control), as a running mean over at most this many samples.
    pub learn_samples: u32,
    /// Floor of the baseline deviation, in the signal's unit (a flat signal still has one).
    pub min_sd: f64,
    /// Standardised values are clipped to ±this before summing.
    pub clip: f64,
}

impl Default for CusumConfig {
    /// `k = 0.5, h = 12`: a shift of 2 baseline deviations is found in about 9 samples on
    /// average, and a stationary Gaussian signal alarms about once in 500,000 samples.
    fn default() -> Self {
        CusumConfig { k: 0.5, h: 12.0, warmup_samples: 120, learn_samples: 3_600, min_sd: 1e-9, clip: 4.0 }
    }
}

/// A change point the CUSUM found.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// Which way.
    pub direction: Direction,
    /// Samples since the sum last left zero: the estimated onset, counted back from now.
    pub onset_samples_ago: u32,
    /// The baseline mean before the change.
    pub baseline_mean: f64,
    /// The baseline deviation before the change.
    pub baseline_sd: f64,
}

/// Two-sided tabular CUSUM; after an alarm it learns a new baseline, so one lasting shift
/// raises one alarm.
#[derive(Clone, Debug, PartialEq)]
pub struct Cusum {
    cfg: CusumConfig,
    /// Baseline samples, their running mean and sum of squared deviations.
    n: u32,
    sum: f64,
    sum_sq: f64,
    baseline: Option<(f64, f64)>,
    pos: f64,
    neg: f64,
    pos_run: u32,
    neg_run: u32,
}

impl Cusum {
    /// A detector with `cfg`.
    pub fn new(cfg: CusumConfig) -> Cusum {
        assert!(cfg.k >= 0.0 && cfg.h > 0.0 && cfg.warmup_samples >= 2 && cfg.clip > cfg.k);
        assert!(cfg.learn_samples >= cfg.warmup_samples);
        Cusum { cfg, n: 0, sum: 0.0, sum_sq: 0.0, baseline: None, pos: 0.0, neg: 0.0, pos_run: 0, neg_run: 0 }
    }

    /// A detector whose baseline was learnt elsewhere (restored from history): armed at once,
    /// as if `samples` values of mean `mean` and deviation `sd` had been seen.
    pub fn seeded(cfg: CusumConfig, mean: f64, sd: f64, samples: u32) -> Cusum {
        let mut c = Cusum::new(cfg);
        let n = samples.clamp(cfg.warmup_samples, cfg.learn_samples);
        c.n = n;
        c.sum = mean;
        c.sum_sq = sd * sd * f64::from(n - 1);
        c.baseline = Some((mean, sd.max(cfg.min_sd)));
        c
    }

    /// The positive and negative sums, in baseline deviations.
    pub fn sums(&self) -> (f64, f64) {
        (self.pos, self.neg)
    }

    /// Whether the baseline is learnt.
    pub fn is_armed(&self) -> bool {
        self.baseline.is_some()
    }

    /// Take one value; `Some` on a change point.
    pub fn update(&mut self, x: f64) -> Option<Change> {
        let in_control = self.pos < self.cfg.h / 2.0 && self.neg < self.cfg.h / 2.0;
        if self.baseline.is_none() || (in_control && self.n < self.cfg.learn_samples) {
            // Running mean and variance (Welford) of the baseline.
            self.n += 1;
            let d = x - self.sum;
            self.sum += d / f64::from(self.n);
            self.sum_sq += d * (x - self.sum);
            if self.n >= self.cfg.warmup_samples {
                let var = self.sum_sq / f64::from(self.n - 1);
                self.baseline = Some((self.sum, var.sqrt().max(self.cfg.min_sd)));
            }
            if self.n <= self.cfg.warmup_samples {
                return None;
            }
        }
        let (mean, sd) = self.baseline?;
        let z = ((x - mean) / sd).clamp(-self.cfg.clip, self.cfg.clip);
        self.pos = (self.pos + z - self.cfg.k).max(0.0);
        self.neg = (self.neg - z - self.cfg.k).max(0.0);
        self.pos_run = if self.pos > 0.0 { self.pos_run + 1 } else { 0 };
        self.neg_run = if self.neg > 0.0 { self.neg_run + 1 } else { 0 };
        let change = if self.pos > self.cfg.h {
            Some((Direction::Up, self.pos_run))
        } else if self.neg > self.cfg.h {
            Some((Direction::Down, self.neg_run))
        } else {
            None
        }?;
        *self = Cusum::new(self.cfg);
        Some(Change { direction: change.0, onset_samples_ago: change.1, baseline_mean: mean, baseline_sd: sd })
    }
}

/// The median of `values` (NaNs ignored), or None when there is none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};

    use super::*;

    const SEEDS: std::ops::Range<u64> = 0..20;
    /// One hour of 1-second samples.
    const HOUR_SAMPLES: usize = 3_600;

    fn noise(seed: u64, n: usize, mean: f64, sd: f64) -> Vec<f64> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let d = Normal::new(mean, sd).expect("normal");
        (0..n).map(|_| d.sample(&mut rng)).collect()
    }

    /// A series of `n` samples N(10, 1) with a step of `step` deviations at `at`.
    fn step_series(seed: u64, n: usize, at: usize, step: f64) -> Vec<f64> {
        let mut s = noise(seed, n, 10.0, 1.0);
        for x in &mut s[at..] {
            *x += step;
        }
        s
    }

    #[test]
    fn ewma_tracks_a_level_and_scores_outliers() {
        let mut e = Ewma::with_span(30.0);
        for x in noise(1, 2_000, 5.0, 0.5) {
            e.update(x);
        }
        let m = e.mean().expect("mean");
        assert!((m - 5.0).abs() < 0.3, "{m}");
        assert!((e.sd() - 0.5).abs() < 0.2, "{}", e.sd());
        assert!(e.z(8.0, 1e-9) > 4.0);
    }

    #[test]
    fn slope_is_exact_on_a_line() {
        let mut s = Slope::new(10);
        assert_eq!(s.slope(), None);
        for t in 0..25 {
            s.update(3.0 + 0.5 * f64::from(t));
        }
        assert!((s.slope().expect("slope") - 0.5).abs() < 1e-12);
    }

    /// Page's CUSUM, k = 0.5, h = 12: a 2σ step is found in (h + 1.166) / (2 - 0.5) ≈ 9
    /// samples on average (Siegmund's approximation); every seed must find it within 25.
    #[test]
    fn cusum_finds_a_step_within_the_expected_samples() {
        for seed in SEEDS {
            let mut c = Cusum::new(CusumConfig::default());
            let series = step_series(seed, 1_000, 500, 2.0);
            let found = series.iter().enumerate().find_map(|(t, &x)| c.update(x).map(|ch| (t, ch)));
            let (t, ch) = found.unwrap_or_else(|| panic!("seed {seed}: step not found"));
            assert!((500..525).contains(&t), "seed {seed}: found at {t}");
            assert_eq!(ch.direction, Direction::Up, "seed {seed}");
            assert!((ch.baseline_mean - 10.0).abs() < 0.5, "seed {seed}: {ch:?}");
            let onset = t - ch.onset_samples_ago as usize;
            assert!((460..=510).contains(&onset), "seed {seed}: onset estimated at {onset}");
        }
        let mut c = Cusum::new(CusumConfig::default());
        let down = step_series(99, 1_000, 500, -3.0);
        let found = down.iter().enumerate().find_map(|(t, &x)| c.update(x).map(|ch| (t, ch.direction)));
        assert!(matches!(found, Some((t, Direction::Down)) if (500..515).contains(&t)), "{found:?}");
    }

    #[test]
    fn cusum_stays_quiet_on_a_stationary_noisy_series_for_an_hour() {
        for seed in SEEDS {
            let mut c = Cusum::new(CusumConfig::default());
            let alarms = noise(seed, HOUR_SAMPLES, 10.0, 1.0).into_iter().filter_map(|x| c.update(x)).count();
            assert_eq!(alarms, 0, "seed {seed}");
        }
    }

    #[test]
    fn cusum_on_log_latency_ignores_heavy_tailed_spikes() {
        // Latency-like: log-normal with a 1% chance of a 20x spike, observed through ln().
        for seed in SEEDS {
            let mut rng = SmallRng::seed_from_u64(seed);
            let base = Normal::new(0.0, 0.3).expect("normal");
            let mut c = Cusum::new(CusumConfig::default());
            let mut alarms = 0;
            for _ in 0..HOUR_SAMPLES {
                let spike = if rand::Rng::random_bool(&mut rng, 0.01) { 20.0_f64.ln() } else { 0.0 };
                if c.update(base.sample(&mut rng) + spike).is_some() {
                    alarms += 1;
                }
            }
            assert_eq!(alarms, 0, "seed {seed}");
        }
    }

    #[test]
    fn cusum_alarms_once_for_a_lasting_shift() {
        let mut c = Cusum::new(CusumConfig::default());
        let alarms = step_series(5, 3_000, 500, 3.0).into_iter().filter_map(|x| c.update(x)).count();
        assert_eq!(alarms, 1);
    }

    #[test]
    fn holt_follows_a_trend_and_flags_a_break() {
        let mut h = Holt::new(0.3, 0.1);
        let series: Vec<f64> = noise(3, 600, 0.0, 0.1).iter().enumerate().map(|(t, n)| 0.05 * t as f64 + n).collect();
        let worst = series.iter().filter_map(|&x| h.update(x, 1e-6)).skip(50).fold(0.0_f64, |a, z| a.max(z.abs()));
        assert!(worst < 5.0, "a steady trend is forecast: worst residual {worst}σ");
        assert!((h.trend() - 0.05).abs() < 0.02, "trend {}", h.trend());
        let z = h.update(series[599] + 0.05 + 3.0, 1e-6).expect("residual");
        assert!(z > 8.0, "a 3.0 jump against 0.1 noise: {z}σ");
    }

    #[test]
    fn the_median_ignores_missing_values() {
        assert_eq!(median(&[1.0, 1.1, 0.9, 1.05]), Some(1.025));
        assert_eq!(median(&[3.0, f64::NAN, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[f64::NAN]), None);
        assert_eq!(median(&[]), None);
    }
}
