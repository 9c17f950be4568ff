//! `presage-ctl forecast [--top N]`: predicted load (seeds 001 and 002) from the shard
//! manager's forecasts (`presage_shardmgr::forecast`): every region and node with its load
//! prediction score, the hottest shards, and what the forecasts advise. Any role that may
//! inspect the cluster may ask.

use presage_shardmgr::{Forecast, ForecastReport, Recommendation};

fn figures(f: &Forecast) -> [String; 3] {
    [format!("{:.0}", f.now), format!("{:.0}", f.peak), crate::time_text(f.peak_at_ms)]
}

/// The report as tables.
pub fn text(r: &ForecastReport) -> String {
    let mut out = format!(
        "load forecast over {} s in {} s buckets (season {} s); the policies {} on it\n\n",
        r.horizon_ms / 1000,
        r.interval_ms / 1000,
        r.season_ms / 1000,
        if r.acting { "act" } else { "do not act" }
    );
    let places = |rows: &[presage_shardmgr::PlaceForecast]| -> Vec<Vec<String>> {
        rows.iter()
            .map(|p| {
                let [now, peak, at] = figures(&p.forecast);
                let mut row = vec![p.node.map_or("-".into(), |n| n.to_string()), p.region.clone()];
                row.extend([format!("{:.2}", p.score), now, peak, at]);
                row
            })
            .collect()
    };
    out += &crate::table(&["NODE", "REGION", "SCORE", "NOW/S", "PEAK/S", "PEAK AT"], &places(&r.regions));
    out += "\n";
    out += &crate::table(&["NODE", "REGION", "SCORE", "NOW/S", "PEAK/S", "PEAK AT"], &places(&r.nodes));
    out += "\n";
    let shards: Vec<Vec<String>> = r
        .shards
        .iter()
        .map(|s| {
            let [now, peak, at] = figures(&s.forecast);
            let history = format!("{}{}", s.forecast.points, if s.forecast.seasonal { " seasonal" } else { "" });
            vec![s.shard.to_string(), s.leader.map_or("-".into(), |l| l.to_string()), now, peak, at, history]
        })
        .collect();
    out += &crate::table(&["SHARD", "LEADER", "NOW/S", "PEAK/S", "PEAK AT", "HISTORY"], &shards);
    out += "\n";
    if r.recommendations.is_empty() {
        out += "no advice: nothing is forecast to pass a threshold or to unbalance a group\n";
    }
    for rec in &r.recommendations {
        out += &match rec {
            Recommendation::Split { shard, why } => format!("split shard {shard}: {why}\n"),
            Recommendation::MoveLeader { shard, from, to, why } => format!(
                "move shard {shard}'s leadership from node {} to node {to}: {why}\n",
                from.map_or("-".into(), |f| f.to_string())
            ),
            Recommendation::KeepSplit { shard, why } => format!("keep shard {shard} split: {why}\n"),
        };
    }
    out
}
