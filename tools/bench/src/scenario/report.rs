//! The scenario's figures as text (one run's modes side by side, a campaign's table), JSON
//! and an SVG plot.

use std::path::Path;

use anyhow::Result;

use super::ScenarioReport;

/// The reports side by side, as text.
pub fn side_by_side(reports: &[ScenarioReport]) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    type Figure = fn(&ScenarioReport) -> String;
    let lines: [(&str, Figure); 11] = [
        ("failed_requests", |r| r.failed_requests.to_string()),
        ("requests", |r| r.requests.to_string()),
        ("p99_ms_steady", |r| format!("{:.2}", r.p99_ms_steady)),
        ("p99_ms_during_event", |r| format!("{:.2}", r.p99_ms_during_event)),
        ("p99 event / steady", |r| format!("{:.2}x", r.p99_ms_during_event / r.p99_ms_steady.max(1e-3))),
        ("max_ms_during_event", |r| format!("{:.1}", r.max_ms_during_event)),
        ("slowest_call_ms", |r| format!("{:.1}", r.slowest_call_ms)),
        ("unavailable_shard_seconds", |r| format!("{:.2}", r.unavailable_shard_seconds)),
        ("bytes_moved", |r| bytesize::ByteSize(r.bytes_moved).to_string()),
        ("warning_lead_seconds", |r| r.warning_lead_seconds.map_or("-".to_string(), |v| format!("{v:.1}"))),
        ("evacuated_before_kill", |r| r.evacuated_before_kill.to_string()),
    ];
    for (name, f) in &lines {
        let mut row = vec![name.to_string()];
        row.extend(reports.iter().map(f));
        rows.push(row);
    }
    let mut header = vec!["figure"];
    let names: Vec<String> = reports.iter().map(|r| format!("{:?}", r.mode).to_lowercase()).collect();
    header.extend(names.iter().map(String::as_str));
    presage_ctl::table(&header, &rows)
}

/// A campaign's reports as one table: a row per fault and mode.
pub fn campaign_table(reports: &[ScenarioReport]) -> String {
    let secs = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            vec![
                r.fault.name().to_string(),
                format!("{:?}", r.mode).to_lowercase(),
                r.failed_requests.to_string(),
                format!("{:.2}", r.p99_ms_steady),
                format!("{:.2}", r.p99_ms_during_event),
                format!("{:.2}x", r.p99_ms_during_event / r.p99_ms_steady.max(1e-3)),
                format!("{:.2}", r.unavailable_shard_seconds),
                secs(r.seconds_to_warning),
                secs(r.seconds_to_no_leaderships),
                bytesize::ByteSize(r.bytes_moved).to_string(),
            ]
        })
        .collect();
    let header = [
        "fault",
        "mode",
        "failed",
        "p99 steady ms",
        "p99 event ms",
        "event/steady",
        "unavailable shard-s",
        "s to warning",
        "s to no leaderships",
        "moved",
    ];
    presage_ctl::table(&header, &rows)
}

/// A campaign's JSON: one object per fault and mode, each with its `"fault"` and `"mode"`.
pub fn campaign_json(reports: &[ScenarioReport]) -> serde_json::Value {
    serde_json::Value::Array(reports.iter().map(|r| serde_json::to_value(r).unwrap_or_default()).collect())
}

/// The JSON of the reports: one report's figures, or `{"predictive": .., "reactive": ..}`.
pub fn to_json(reports: &[ScenarioReport]) -> serde_json::Value {
    match reports {
        [one] => serde_json::to_value(one).unwrap_or_default(),
        many => serde_json::Value::Object(
            many.iter()
                .map(|r| (format!("{:?}", r.mode).to_lowercase(), serde_json::to_value(r).unwrap_or_default()))
                .collect(),
        ),
    }
}

/// Draws each report's p99 and throughput per second into `path` (SVG), the ramp and the
/// kill marked.
pub fn draw(reports: &[ScenarioReport], path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing {}: {e}", path.display());
    use crate::ycsb::plot::{COLOURS, SIZE_PX};
    let size = SIZE_PX;
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(size.1 / 2);
    let max_x = reports.iter().map(|r| r.series.len() as f64).fold(1.0, f64::max);
    let max_ops = reports.iter().flat_map(|r| r.series.iter().map(|s| s.ops as f64)).fold(1.0, f64::max) * 1.1;
    let max_p99 = reports.iter().flat_map(|r| r.series.iter().filter_map(|s| s.p99_ms)).fold(0.1, f64::max) * 1.1;
    for (area, caption, y_max, y_desc, throughput) in [
        (&top, "failing node: requests completed per second", max_ops, "ops/s", true),
        (&bottom, "failing node: p99 latency per second (log scale)", max_p99, "p99 ms", false),
    ] {
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..max_x, (0.1f64..y_max.max(1.0)).log_scale())
            .map_err(|e| err(&e))?;
        chart.configure_mesh().x_desc("seconds").y_desc(y_desc).draw().map_err(|e| err(&e))?;
        for (i, r) in reports.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let pts: Vec<(f64, f64)> = r
                .series
                .iter()
                .filter_map(|s| {
                    let y = if throughput { Some(s.ops as f64) } else { s.p99_ms };
                    y.map(|y| (s.second as f64, y.max(0.1)))
                })
                .collect();
            chart
                .draw_series(LineSeries::new(pts, colour.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(format!("{:?}", r.mode).to_lowercase())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
            for x in [r.ramp_at_secs, r.kill_at_secs] {
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![(x, 0.1), (x, y_max.max(1.0))],
                        colour.mix(0.5).stroke_width(1),
                    )))
                    .map_err(|e| err(&e))?;
            }
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
