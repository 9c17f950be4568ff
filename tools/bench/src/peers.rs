//! `presage-bench peers`: Presage measured beside its peers — etcd, redis-server, the
//! three-engines bound — in one invocation, with the same client threads and settings, and
//! one table: puts, gets, YCSB A and YCSB C, each as throughput, p50 and p99, with every
//! target's throughput over the first one's.
//!
//! Each target is opened once (a playground started, a server connected), loaded with
//! `records` records (the puts), then measured on workload C (the gets; C is read only, so its
//! figures are the gets') and on workload A, on the same records, before the next target
//! opens. `make bench-peers` (`scripts/bench-peers.sh`) starts a 3-member etcd and a
//! redis-server with `appendfsync always` on loopback and runs this against them.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::ycsb::plot::{PlotError, COLOURS, SIZE_PX};
use crate::ycsb::run::{client_runtime, measure, open, BadOptions, Environment, PhaseReport, Progress, RunOptions};
use crate::ycsb::target::TargetSpec;
use crate::ycsb::Workload;

/// The figure groups of the table, in order.
pub const GROUPS: [&str; 3] = ["puts", "gets", "ycsb_a"];

/// One group's figures for one target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figure {
    /// Successful operations per second.
    pub ops_per_sec: f64,
    /// Median latency, µs.
    pub p50_us: u64,
    /// 99th percentile latency, µs.
    pub p99_us: u64,
    /// Operations that failed.
    pub errors: u64,
}

impl Figure {
    fn of(p: &PhaseReport) -> Figure {
        Figure { ops_per_sec: p.throughput_ops_per_sec, p50_us: p.p50_us, p99_us: p.p99_us, errors: p.errors }
    }
}

/// One target's row.
#[derive(Debug, Clone, Serialize)]
pub struct PeerRow {
    /// The target as given.
    pub target: String,
    /// Why the target could not be used, if so.
    pub error: Option<String>,
    /// By group ([`GROUPS`]; YCSB C is the gets).
    pub figures: BTreeMap<String, Figure>,
    /// Throughput over the first target's, by group.
    pub vs_first: BTreeMap<String, f64>,
    /// The phases in full: load, workload C, workload A.
    pub phases: Vec<PhaseReport>,
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct PeersReport {
    /// What ran (`workload` is unused: C and A both run).
    pub options: RunOptions,
    /// Every target, in the order given; the first is the one the others are divided by.
    pub rows: Vec<PeerRow>,
}

/// Measures every target in turn (see the module doc).
pub fn run(
    opts: &RunOptions,
    targets: &[TargetSpec],
    env: &Environment,
    progress: &dyn Progress,
) -> Result<PeersReport, BadOptions> {
    opts.validate()?;
    if targets.is_empty() {
        return Err(BadOptions("give at least one --target".into()));
    }
    let rt = client_runtime()?;
    let mut rows = Vec::with_capacity(targets.len());
    for spec in targets {
        let name = spec.name();
        let mut row = PeerRow {
            target: name.clone(),
            error: None,
            figures: BTreeMap::new(),
            vs_first: BTreeMap::new(),
            phases: Vec::new(),
        };
        match open(spec, opts, env, rt.handle()) {
            Err(e) => {
                tracing::error!(target = %name, error = %e, "benchmark target unusable");
                row.error = Some(e.to_string());
            }
            Ok(target) => {
                let (load, runs) = measure(target.as_ref(), &name, opts, &[Workload::C, Workload::A], progress);
                drop(target);
                row.phases.push(load);
                row.phases.extend(runs);
                for (group, phase) in GROUPS.iter().zip(&row.phases) {
                    row.figures.insert(group.to_string(), Figure::of(phase));
                }
            }
        }
        rows.push(row);
    }
    let first = rows.first().map(|r| r.figures.clone()).unwrap_or_default();
    for row in rows.iter_mut() {
        for (group, f) in &row.figures {
            if let Some(base) = first.get(group).filter(|b| b.ops_per_sec > 0.0) {
                row.vs_first.insert(group.clone(), f.ops_per_sec / base.ops_per_sec);
            }
        }
    }
    Ok(PeersReport { options: opts.clone(), rows })
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// The table.
pub fn render(report: &PeersReport) -> String {
    let o = &report.options;
    let mut text = format!(
        "{} records of {} B, {} threads, {} connection(s) per RESP/etcd target, {} s per run phase; \
         gets = YCSB C; x = throughput over {}\n",
        o.records,
        o.value_bytes,
        o.threads,
        o.connections.map_or("one per thread".to_string(), |c| c.to_string()),
        o.duration_secs.map_or("-".to_string(), |d| d.to_string()),
        report.rows.first().map_or("-", |r| r.target.as_str()),
    );
    let header = [
        "TARGET",
        "PUTS/S",
        "P50 MS",
        "P99 MS",
        "x",
        "GETS/S",
        "P50 MS",
        "P99 MS",
        "x",
        "YCSB-A OPS/S",
        "P50 MS",
        "P99 MS",
        "x",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for r in &report.rows {
        let mut cells = vec![r.target.clone()];
        if let Some(e) = &r.error {
            cells.push(format!("unusable: {e}"));
            rows.push(cells);
            continue;
        }
        for group in GROUPS {
            match r.figures.get(group) {
                Some(f) => {
                    cells.push(format!("{:.0}", f.ops_per_sec));
                    cells.push(ms(f.p50_us));
                    cells.push(ms(f.p99_us));
                    cells.push(r.vs_first.get(group).map_or("-".into(), |x| format!("{x:.2}")));
                }
                None => cells.extend(["-".to_string(), "-".into(), "-".into(), "-".into()]),
            }
        }
        rows.push(cells);
    }
    let widths: Vec<usize> =
        (0..header.len()).map(|i| rows.iter().filter_map(|r| r.get(i)).map(String::len).max().unwrap_or(0)).collect();
    for r in rows {
        let line: Vec<String> = r.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        text.push_str(line.join("  ").trim_end());
        text.push('\n');
    }
    let errors: u64 = report.rows.iter().flat_map(|r| r.figures.values()).map(|f| f.errors).sum();
    if errors > 0 {
        text.push_str(&format!("{errors} operation(s) failed; see the JSON for each phase's last error\n"));
    }
    text
}

/// Draws the throughput of every target, grouped by figure, into `path` (SVG).
pub fn draw(report: &PeersReport, path: &Path) -> Result<(), PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError { path: path.display().to_string(), reason: e.to_string() };
    let n = report.rows.len().max(1);
    let top = report.rows.iter().flat_map(|r| r.figures.values()).map(|f| f.ops_per_sec).fold(1.0, f64::max) * 1.1;
    let root = SVGBackend::new(path, SIZE_PX).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    // Each group takes n bars and one bar's gap.
    let slots = (GROUPS.len() * (n + 1)) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption("throughput by target (puts, gets, YCSB A)", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..slots, 0.0..top)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(GROUPS.len())
        .x_label_formatter(&|x| GROUPS.get((*x / (n + 1) as f64) as usize).map_or(String::new(), |g| g.to_string()))
        .y_desc("ops/s")
        .draw()
        .map_err(|e| err(&e))?;
    for (i, row) in report.rows.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let bars: Vec<Rectangle<(f64, f64)>> = GROUPS
            .iter()
            .enumerate()
            .filter_map(|(g, group)| {
                let f = row.figures.get(*group)?;
                let x = (g * (n + 1) + i) as f64 + 0.5;
                Some(Rectangle::new([(x, 0.0), (x + 0.9, f.ops_per_sec)], colour.filled()))
            })
            .collect();
        chart
            .draw_series(bars)
            .map_err(|e| err(&e))?
            .label(row.target.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], colour.filled()));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ycsb::run::Quiet;

    #[test]
    fn peers_measure_every_group_on_each_target_and_divide_by_the_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = RunOptions { records: 200, ops: 300, threads: 2, ..RunOptions::default() };
        let env = Environment { work_dir: dir.path().to_path_buf(), presage_binary: Default::default() };
        let targets = [TargetSpec::RawEngine, TargetSpec::ThreeEngines, "resp:127.0.0.1:1".parse().expect("spec")];
        let report = run(&opts, &targets, &env, &Quiet).expect("runs");
        assert_eq!(report.rows.len(), 3);
        for row in &report.rows[..2] {
            assert!(row.error.is_none(), "{:?}", row.error);
            for group in GROUPS {
                let f = &row.figures[group];
                assert!(f.ops_per_sec > 0.0 && f.p99_us >= f.p50_us && f.errors == 0, "{group}: {f:?}");
            }
            assert_eq!(row.phases.len(), 3, "load, C, A");
        }
        assert_eq!(report.rows[0].vs_first["puts"], 1.0);
        assert!(report.rows[2].error.is_some(), "nothing listens on port 1");
        let text = render(&report);
        assert!(text.contains("three-engines") && text.contains("unusable"), "{text}");
        let svg = dir.path().join("peers.svg");
        draw(&report, &svg).expect("draws");
        assert!(std::fs::read_to_string(&svg).expect("svg").contains("<svg"));
    }
}
