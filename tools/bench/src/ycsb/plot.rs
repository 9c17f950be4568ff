//! `--plot FILE.svg`: the run phase of every target over time, throughput above and p99
//! latency below, one line per target (plotters, SVG backend; text is left to the viewer's
//! fonts, so no font files are needed).

use std::path::Path;

use plotters::prelude::*;

use super::run::BenchReport;

/// Width and height of the picture, pixels.
pub(crate) const SIZE_PX: (u32, u32) = (1000, 700);

/// Why the plot could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("drawing {path}: {reason}")]
pub struct PlotError {
    /// The file.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// One colour per line, in order.
pub(crate) const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// One second of a run: (second, ops/s, p99 ms).
type Point = (f64, f64, Option<f64>);

/// Draws the run phases of `report` into `path`.
pub fn draw(report: &BenchReport, path: &Path) -> Result<(), PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError { path: path.display().to_string(), reason: e.to_string() };
    let lines: Vec<(String, Vec<Point>)> = report
        .targets
        .iter()
        .filter_map(|t| {
            let run = t.run.as_ref()?;
            let pts = run.series.iter().map(|s| (s.second as f64, s.ops as f64, s.p99_us.map(|p| p as f64 / 1000.0)));
            Some((t.target.clone(), pts.collect()))
        })
        .collect();
    let max_x = lines.iter().flat_map(|l| l.1.iter().map(|p| p.0 + 1.0)).fold(1.0, f64::max);
    let max_ops = lines.iter().flat_map(|l| l.1.iter().map(|p| p.1)).fold(1.0, f64::max) * 1.1;
    let max_p99 = lines.iter().flat_map(|l| l.1.iter().filter_map(|p| p.2)).fold(0.1, f64::max) * 1.1;

    let root = SVGBackend::new(path, SIZE_PX).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(SIZE_PX.1 / 2);
    let title = format!("YCSB {:?}: run phase, {} threads", report.options.workload, report.options.threads);
    for (area, caption, y_max, y_desc, throughput) in [
        (&top, format!("{title}: throughput"), max_ops, "ops/s", true),
        (&bottom, format!("{title}: p99 latency"), max_p99, "p99 ms", false),
    ] {
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..max_x, 0f64..y_max)
            .map_err(|e| err(&e))?;
        chart.configure_mesh().x_desc("seconds").y_desc(y_desc).draw().map_err(|e| err(&e))?;
        for (i, (name, pts)) in lines.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let series: Vec<(f64, f64)> = pts
                .iter()
                .filter_map(|&(x, ops, p99)| if throughput { Some((x, ops)) } else { p99.map(|p| (x, p)) })
                .collect();
            chart
                .draw_series(LineSeries::new(series, colour.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
