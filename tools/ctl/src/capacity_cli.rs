//! `presage-ctl capacity`: capacity advice (seeds 001 and 004) from the shard manager's
//! capacity history (`presage_shardmgr::capacity`): per region and node, bytes and request
//! load now, their growth per day, where they will be at the horizon, the date each crosses
//! its capacity, and how many nodes to add where. Any role that may inspect the cluster may
//! ask.

use std::time::{Duration, UNIX_EPOCH};

use presage_shardmgr::{CapacityReport, Projection};

fn date(ms: Option<u64>) -> String {
    ms.map_or_else(
        || "-".into(),
        |ms| humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string(),
    )
}

/// A byte projection's cells: now, per day, at the horizon, usable, crossing date.
fn bytes_cells(p: &Projection) -> [String; 5] {
    let b = |v: f64| crate::human_bytes(v.max(0.0) as u64);
    let sign = if p.per_day < 0.0 { "-" } else { "" };
    [b(p.now), format!("{sign}{}", b(p.per_day.abs())), b(p.at_horizon), b(p.capacity), date(p.crosses_at_ms)]
}

/// A load projection's cells (requests per second).
fn load_cells(p: &Projection) -> [String; 5] {
    let cap = if p.capacity > 0.0 { format!("{:.0}", p.capacity) } else { "-".into() };
    [format!("{:.0}", p.now), format!("{:+.0}", p.per_day), format!("{:.0}", p.at_horizon), cap, date(p.crosses_at_ms)]
}

/// The report as tables.
pub fn text(r: &CapacityReport) -> String {
    let mut out = format!(
        "capacity over {} days from {} buckets of {} s; usable: {:.0}% of each node's bytes, {:.0}% of its requests/s\n\n",
        r.horizon_ms / 86_400_000,
        r.history_points,
        r.interval_ms / 1000,
        r.disk_fill * 100.0,
        r.load_fill * 100.0
    );
    let disk = ["USED", "PER DAY", "AT HORIZON", "USABLE", "FULL AT"];
    let load = ["PEAK/S", "PER DAY", "AT HORIZON", "USABLE/S", "SATURATED AT"];
    let head = |first: &[&'static str], cols: &[&'static str; 5]| -> Vec<&'static str> {
        first.iter().chain(cols.iter()).copied().collect()
    };
    let region_rows = |bytes: bool| -> Vec<Vec<String>> {
        r.regions
            .iter()
            .map(|g| {
                let mut row = vec![g.region.clone(), g.nodes.to_string(), g.spares.to_string()];
                row.extend(if bytes { bytes_cells(&g.disk) } else { load_cells(&g.load) });
                row
            })
            .collect()
    };
    out += &crate::table(&head(&["REGION", "NODES", "SPARES"], &disk), &region_rows(true));
    out += "\n";
    out += &crate::table(&head(&["REGION", "NODES", "SPARES"], &load), &region_rows(false));
    out += "\n";
    let node_rows: Vec<Vec<String>> = r
        .nodes
        .iter()
        .map(|n| {
            let mut row = vec![n.node.to_string(), n.region.clone(), if n.in_group { "group" } else { "spare" }.into()];
            let [used, _, disk_at, _, full] = bytes_cells(&n.disk);
            let [peak, _, load_at, _, saturated] = load_cells(&n.load);
            row.extend([used, disk_at, full, peak, load_at, saturated]);
            row
        })
        .collect();
    let node_head =
        ["NODE", "REGION", "ROLE", "USED", "AT HORIZON", "FULL AT", "PEAK/S", "AT HORIZON/S", "SATURATED AT"];
    out += &crate::table(&node_head, &node_rows);
    out += "\n";
    if r.add_nodes == 0 {
        out += "no nodes to add within the horizon\n";
    } else {
        out += &format!("add {} node(s) in all\n", r.add_nodes);
    }
    for g in &r.regions {
        let verb = if g.add_nodes > 0 { format!("add {} node(s)", g.add_nodes) } else { "nothing to add".into() };
        out += &format!("region {}: {verb}: {}\n", g.region, g.advice);
    }
    out
}
