//! Failure-history priors from the LANL node failure records (1996-2005): how likely a node
//! is to fail, given how often it failed in the last [`WINDOW_DAYS`] days.
//!
//! For every node of every system, time is split by the node's state, the number of its
//! failures in the trailing window (0, 1, 2-3, 4 or more). The rate of a state is the failures
//! that happened in it over the node-days spent in it; a node that never failed spent its
//! whole production time in state 0. A node's exposure runs from its system's production
//! month (or its first failure, for "before tracking") to its decommissioning month (or the
//! last failure in the file, for "current"). Events flagged `Same Event` count once; events
//! of no node (system-wide) are left out.
//!
//! Exposure is per system (its earliest production and latest decommissioning month), which
//! overstates the node-days of nodes installed later and so understates rates somewhat.
//!
//! The shard manager counts each node's observed failures (declared down: silent for longer
//! than `node-down-after-ms`, whatever the cause, so a long restart counts) and turns the rate
//! of its state into P(failure within the model's horizon) = 1 - exp(-rate x horizon), one of
//! the independent causes a node's risk combines.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::PfaError;

/// The trailing window failures are counted over, days.
pub const WINDOW_DAYS: f64 = 30.0;
/// The states: failures in the window at least `MIN[i]` (and below `MIN[i + 1]`).
pub const STATE_MIN_FAILURES: [u32; 4] = [0, 1, 2, 4];
/// The prior shipped with Presage: `presage-ctl pfa prior --lanl pfa/data/lanl/... --out`.
pub const DEFAULT_PRIOR_JSON: &str = include_str!("../models/failure-prior.json");
/// Most rows a LANL file may hold.
pub const MAX_ROWS: usize = 1_000_000;

/// One state's rate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateRate {
    /// Failures in the trailing window, at least.
    pub min_failures: u32,
    /// Node-days spent in the state.
    pub node_days: f64,
    /// Failures that happened in it.
    pub failures: u64,
    /// `failures / node_days`.
    pub failures_per_node_day: f64,
}

/// Failure rates by recent failure history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailurePrior {
    /// Where the rates come from.
    pub source: String,
    /// The trailing window, days.
    pub window_days: f64,
    /// Systems, nodes with a failure, failures counted.
    pub systems: usize,
    /// Nodes with at least one failure.
    pub failed_nodes: usize,
    /// Failure events counted.
    pub events: u64,
    /// Events with no node (system-wide), not counted.
    pub skipped_events: u64,
    /// By state, in [`STATE_MIN_FAILURES`] order.
    pub states: Vec<StateRate>,
}

impl FailurePrior {
    /// The shipped prior.
    pub fn shipped() -> Result<FailurePrior, PfaError> {
        serde_json::from_str(DEFAULT_PRIOR_JSON).map_err(|e| PfaError::Model(format!("shipped prior: {e}")))
    }

    /// P(failure within `horizon_secs`) of a node with `recent_failures` in the window.
    pub fn probability(&self, recent_failures: u32, horizon_secs: u64) -> f64 {
        let rate = self
            .states
            .iter()
            .rev()
            .find(|s| recent_failures >= s.min_failures)
            .map_or(0.0, |s| s.failures_per_node_day);
        1.0 - (-rate * horizon_secs as f64 / 86_400.0).exp()
    }

    /// Computes the rates from a LANL failure file (CSV with `System`, `nodes`, `nodenum`,
    /// `node prod`, `node decom`, `Prob Started`, `Same Event`).
    pub fn from_lanl_csv<R: std::io::Read>(source: &str, reader: R) -> Result<FailurePrior, PfaError> {
        let mut rdr = csv::ReaderBuilder::new().flexible(true).from_reader(reader);
        let headers = rdr.headers().map_err(|e| PfaError::csv(source, 1, e))?.clone();
        let need = |name: &str| {
            headers.iter().position(|h| h.trim() == name).ok_or_else(|| PfaError::Data {
                file: source.to_string(),
                line: 1,
                reason: format!("no `{name}` column: not a LANL failure file"),
            })
        };
        let (sys, nodes, num, prod, decom, started, same) = (
            need("System")?,
            need("nodes")?,
            need("nodenum")?,
            need("node prod")?,
            need("node decom")?,
            need("Prob Started")?,
            need("Same Event")?,
        );
        struct System {
            nodes: u64,
            prod: Option<f64>,
            decom: Option<f64>,
            events: BTreeMap<u64, Vec<f64>>,
        }
        let mut systems: BTreeMap<String, System> = BTreeMap::new();
        let mut last_day = f64::MIN;
        let mut events = 0u64;
        let mut skipped = 0u64;
        for (i, record) in rdr.records().enumerate() {
            let line = i + 2;
            if i >= MAX_ROWS {
                return Err(PfaError::Data { file: source.into(), line, reason: format!("more than {MAX_ROWS} rows") });
            }
            let record = record.map_err(|e| PfaError::csv(source, line, e))?;
            let field = |i: usize| record.get(i).unwrap_or("").trim();
            let bad = |reason: String| PfaError::Data { file: source.to_string(), line, reason };
            if field(same).eq_ignore_ascii_case("yes") {
                continue;
            }
            if field(num).is_empty() {
                // A system-wide event, not one node's.
                skipped += 1;
                continue;
            }
            let day =
                parse_datetime_days(field(started)).ok_or_else(|| bad(format!("bad date `{}`", field(started))))?;
            let node: u64 = field(num).parse().map_err(|_| bad(format!("bad nodenum `{}`", field(num))))?;
            let count: u64 = field(nodes).parse().map_err(|_| bad(format!("bad nodes `{}`", field(nodes))))?;
            let s = systems.entry(field(sys).to_string()).or_insert(System {
                nodes: 0,
                prod: None,
                decom: None,
                events: BTreeMap::new(),
            });
            s.nodes = s.nodes.max(count);
            if let Some(p) = parse_month_days(field(prod)) {
                s.prod = Some(s.prod.map_or(p, |x: f64| x.min(p)));
            }
            if let Some(d) = parse_month_days(field(decom)) {
                // The end of the decommissioning month.
                let d = d + 30.0;
                s.decom = Some(s.decom.map_or(d, |x: f64| x.max(d)));
            }
            s.events.entry(node).or_default().push(day);
            last_day = last_day.max(day);
            events += 1;
        }
        if events == 0 {
            return Err(PfaError::Data { file: source.into(), line: 1, reason: "no failure events".into() });
        }
        let n = STATE_MIN_FAILURES.len();
        let state_of = |k: usize| STATE_MIN_FAILURES.iter().rposition(|m| k as u32 >= *m).unwrap_or(0);
        let (mut days, mut fails) = (vec![0.0f64; n], vec![0u64; n]);
        let mut failed_nodes = 0;
        for s in systems.values_mut() {
            let first = s.events.values().flatten().copied().fold(f64::MAX, f64::min);
            let start = s.prod.unwrap_or(first).min(first);
            let end = s.decom.unwrap_or(last_day).max(s.events.values().flatten().copied().fold(f64::MIN, f64::max));
            let exposure = (end - start).max(0.0);
            let quiet_nodes = s.nodes.saturating_sub(s.events.len() as u64);
            days[0] += exposure * quiet_nodes as f64;
            for ev in s.events.values_mut() {
                failed_nodes += 1;
                ev.sort_by(f64::total_cmp);
                // Breakpoints: each failure (the count goes up) and each failure + window (down).
                let mut points: Vec<f64> = ev.iter().flat_map(|t| [*t, t + WINDOW_DAYS]).collect();
                points.push(start);
                points.push(end);
                points.retain(|t| (start..=end).contains(t));
                points.sort_by(f64::total_cmp);
                points.dedup();
                let recent = |t: f64| ev.iter().filter(|&&e| e < t && e >= t - WINDOW_DAYS).count();
                for w in points.windows(2) {
                    days[state_of(recent(w[1]))] += w[1] - w[0];
                }
                for &t in ev.iter() {
                    fails[state_of(recent(t))] += 1;
                }
            }
        }
        let states = (0..n)
            .map(|i| StateRate {
                min_failures: STATE_MIN_FAILURES[i],
                node_days: days[i],
                failures: fails[i],
                failures_per_node_day: if days[i] > 0.0 { fails[i] as f64 / days[i] } else { 0.0 },
            })
            .collect();
        Ok(FailurePrior {
            source: source.to_string(),
            window_days: WINDOW_DAYS,
            systems: systems.len(),
            failed_nodes,
            events,
            skipped_events: skipped,
            states,
        })
    }
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `8/15/1998 15:13` as days since the epoch (with the time of day as a fraction).
fn parse_datetime_days(s: &str) -> Option<f64> {
    let (date, time) = s.split_once(' ').unwrap_or((s, "0:00"));
    let mut p = date.split('/').map(|x| x.trim().parse::<i64>().ok());
    let (m, d, y) = (p.next()??, p.next()??, p.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let (h, min) = time.split_once(':').and_then(|(h, m)| Some((h.parse::<f64>().ok()?, m.parse::<f64>().ok()?)))?;
    Some(days_from_civil(y, m, d) as f64 + (h * 60.0 + min) / 1440.0)
}

/// A month as the file writes it: `Jan-97` (month-year), or `2-May` (year 2002, May: a
/// spreadsheet's rendering of `May-02`). None for anything else (`before tracking`,
/// `current`).
fn parse_month_days(s: &str) -> Option<f64> {
    const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
    let (a, b) = s.split_once('-')?;
    let month = |x: &str| MONTHS.iter().position(|m| x.eq_ignore_ascii_case(m)).map(|i| i as i64 + 1);
    let (m, y) = match (month(a), b.parse::<i64>().ok(), a.parse::<i64>().ok(), month(b)) {
        (Some(m), Some(y), _, _) => (m, y),
        (_, _, Some(y), Some(m)) => (m, y),
        _ => return None,
    };
    let year = if y < 50 {
        2000 + y
    } else if y < 100 {
        1900 + y
    } else {
        y
    };
    Some(days_from_civil(year, m, 1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_in_the_files_forms() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(parse_datetime_days("1/2/1970 12:00"), Some(1.5));
        assert_eq!(parse_month_days("Jan-97"), Some(days_from_civil(1997, 1, 1) as f64));
        assert_eq!(parse_month_days("2-May"), Some(days_from_civil(2002, 5, 1) as f64));
        assert_eq!(parse_month_days("current"), None);
        assert_eq!(parse_datetime_days("13/1/2000 0:00"), None);
    }

    /// Two nodes of a 4-node system over 100 days: node 1 fails on days 10 and 20 (the
    /// second in state 1), node 2 on day 50; nodes 3 and 4 never.
    #[test]
    fn rates_split_time_by_recent_failures() {
        let day = |d: u32| format!("{}/{}/1970 0:00", if d < 31 { 1 } else { 2 }, if d < 31 { d + 1 } else { d - 30 });
        let rows = [(1, day(10)), (1, day(20)), (2, day(50))];
        let mut csv = "System,nodes,nodenum,node prod,node decom,Prob Started,Same Event\n".to_string();
        for (n, d) in &rows {
            csv.push_str(&format!("7,4,{n},Jan-70,current,{d},No\n"));
        }
        csv.push_str(&format!("7,4,1,Jan-70,current,{},Yes\n", day(21)));
        let p = FailurePrior::from_lanl_csv("t", csv.as_bytes()).expect("parses");
        assert_eq!((p.systems, p.failed_nodes, p.events), (1, 2, 3));
        // Exposure: day 0 to day 50 (the last failure; "current") for all 4 nodes.
        let s = &p.states;
        assert_eq!((s[0].failures, s[1].failures), (2, 1), "{s:?}");
        // Node 1: state 1 from day 10 to 20, state 2 (2-3) from 20 to 40, state 1 to 50.
        assert!((s[1].node_days - 20.0).abs() < 1e-6, "{s:?}");
        assert!((s[2].node_days - 20.0).abs() < 1e-6, "{s:?}");
        assert!((s[0].node_days - (200.0 - 40.0)).abs() < 1e-6, "{s:?}");
        assert!(p.probability(1, 86_400) > p.probability(0, 86_400));
        let bad = FailurePrior::from_lanl_csv("t", "System,nodes\n1,2\n".as_bytes()).expect_err("not LANL");
        assert!(bad.to_string().contains("no `nodenum` column"), "{bad}");
    }

    /// The shipped prior is what the LANL file in the repository gives, and a node that
    /// failed recently is more likely to fail again.
    #[test]
    fn the_shipped_prior_is_computed_from_the_lanl_file() {
        let file = format!("{}/data/lanl/lanl_failures_1996_2005.csv", crate::node_model::manifest_dir());
        let f = std::fs::File::open(file).expect("LANL file");
        let mut computed = FailurePrior::from_lanl_csv("lanl_failures_1996_2005.csv", f).expect("parses");
        let shipped = FailurePrior::shipped().expect("shipped");
        computed.source = shipped.source.clone();
        assert_eq!(computed, shipped);
        let rates: Vec<f64> = shipped.states.iter().map(|s| s.failures_per_node_day).collect();
        assert!(rates.windows(2).all(|w| w[1] > w[0]), "{rates:?}");
    }
}
