//! `presage-ctl shifts`: the gradual shifts of risky ranges' leaderships off their nodes
//! (`presage_shardmgr::shift`), running and recently finished, from the cluster view
//! (`GET /v1/cluster`, any token).

use presage_shardmgr::Shift;

/// One row per shift, running first.
pub fn table(shifts: &[Shift]) -> String {
    let mut sorted: Vec<&Shift> = shifts.iter().collect();
    sorted.sort_by_key(|s| (s.finished_ms.is_some(), s.node));
    let rows: Vec<Vec<String>> = sorted
        .iter()
        .map(|s| {
            vec![
                s.node.to_string(),
                if s.finished_ms.is_some() { "finished".into() } else { "shifting".into() },
                format!("{:.0}%", s.weight * 100.0),
                format!("{}/{}", s.moved, s.total),
                crate::time_text(s.started_ms),
            ]
        })
        .collect();
    crate::table(&["NODE", "STATE", "WEIGHT", "MOVED/TOTAL", "STARTED"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_shifts_come_first_with_their_weight() {
        let mut done = Shift::start(1, 0, 2);
        done.finished_ms = Some(5_000);
        done.weight = 1.0;
        let mut running = Shift::start(2, 1_000, 4);
        running.moved = 1;
        running.weight = 0.25;
        let t = table(&[done, running]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NODE"), "{t}");
        assert!(lines[1].starts_with('2') && lines[1].contains("shifting") && lines[1].contains("25%"), "{t}");
        assert!(lines[1].contains("1/4") && lines[2].contains("finished"), "{t}");
    }
}
