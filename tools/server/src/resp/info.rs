//! `INFO [section ...]`: the sections Redis tools read (server, clients, memory,
//! persistence, stats, replication, cpu) and Presage's own (`presage`), in Redis's
//! `field:value` lines. `INFO` alone, `default` and `all` give every section; unknown
//! sections give nothing, as in Redis. There is no keyspace section: counting keys scans
//! the cluster (`DBSIZE` does that, bounded).
//!
//! The mode is `standalone`, as `HELLO` says: any node serves any key, so clients must not
//! use Redis Cluster mode (there are no slots or MOVED answers).

use std::io::Read;
use std::sync::atomic::Ordering;

use super::Shared;

/// Sections in the order INFO prints them.
const SECTIONS: &[&str] = &["server", "clients", "memory", "persistence", "stats", "replication", "cpu", "presage"];

/// Bytes read from a `/proc` file at most.
const MAX_PROC_FILE_BYTES: u64 = 64 << 10;

/// The INFO text for `args` (section names) on a connection speaking RESP `resp`.
pub(super) fn info(shared: &Shared, resp: u8, args: &[Vec<u8>]) -> String {
    let asked: Vec<String> = args.iter().map(|a| String::from_utf8_lossy(a).to_ascii_lowercase()).collect();
    let every = asked.is_empty() || asked.iter().any(|a| matches!(a.as_str(), "all" | "default" | "everything"));
    let mut out = String::new();
    for section in SECTIONS {
        if !every && !asked.iter().any(|a| a == section) {
            continue;
        }
        if !out.is_empty() {
            out.push_str("\r\n");
        }
        let title = format!("{}{}", section[..1].to_ascii_uppercase(), &section[1..]);
        out.push_str(&format!("# {}\r\n", if *section == "cpu" { "CPU".to_string() } else { title }));
        for (field, value) in fields(shared, resp, section) {
            out.push_str(&format!("{field}:{value}\r\n"));
        }
    }
    out
}

fn fields(shared: &Shared, resp: u8, section: &str) -> Vec<(&'static str, String)> {
    let uptime_s = shared.started.elapsed().as_secs();
    match section {
        "server" => vec![
            ("redis_version", "7.0.0".into()),
            ("presage_version", env!("CARGO_PKG_VERSION").into()),
            ("redis_mode", "standalone".into()),
            ("os", std::env::consts::OS.into()),
            ("arch_bits", (usize::BITS).to_string()),
            ("process_id", std::process::id().to_string()),
            ("tcp_port", shared.local_addr.port().to_string()),
            ("uptime_in_seconds", uptime_s.to_string()),
            ("uptime_in_days", (uptime_s / 86_400).to_string()),
        ],
        "clients" => vec![
            ("connected_clients", shared.metrics.connections.with_label_values(&["resp"]).get().to_string()),
            ("maxclients", shared.cfg.max_connections.to_string()),
        ],
        "memory" => {
            let rss = rss_bytes().unwrap_or(0);
            vec![
                ("used_memory", rss.to_string()),
                ("used_memory_human", human_bytes(rss)),
                ("used_memory_rss", rss.to_string()),
                ("maxmemory", "0".into()),
                ("maxmemory_policy", "noeviction".into()),
            ]
        }
        // Every acknowledged write is in the Raft log on a majority, synced: never "saving".
        "persistence" => {
            vec![("loading", "0".into()), ("aof_enabled", "0".into()), ("rdb_bgsave_in_progress", "0".into())]
        }
        "stats" => vec![
            ("total_connections_received", shared.connections_received.load(Ordering::Relaxed).to_string()),
            ("total_commands_processed", shared.commands_processed.load(Ordering::Relaxed).to_string()),
        ],
        "replication" => vec![("role", "master".into()), ("connected_slaves", "0".into())],
        "cpu" => {
            let (user, sys) = cpu_seconds().unwrap_or((0.0, 0.0));
            vec![("used_cpu_sys", format!("{sys:.6}")), ("used_cpu_user", format!("{user:.6}"))]
        }
        "presage" => vec![
            ("shards_cached", shared.client.cached_routes().len().to_string()),
            ("protocol", resp.to_string()),
            ("pipeline_runs", shared.runs.load(Ordering::Relaxed).to_string()),
            ("pipeline_run_commands", shared.run_commands.load(Ordering::Relaxed).to_string()),
        ],
        _ => Vec::new(),
    }
}

fn read_proc(path: &str) -> Option<String> {
    let mut text = String::new();
    std::fs::File::open(path).ok()?.take(MAX_PROC_FILE_BYTES).read_to_string(&mut text).ok()?;
    Some(text)
}

/// The process's resident memory (`VmRSS` of `/proc/self/status`).
fn rss_bytes() -> Option<u64> {
    let status = read_proc("/proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// User and system CPU seconds of the process (`/proc/self/stat`, at 100 ticks a second).
fn cpu_seconds() -> Option<(f64, f64)> {
    let stat = read_proc("/proc/self/stat")?;
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).map(|t| t / 100.0);
    Some((ticks(11)?, ticks(12)?))
}

fn human_bytes(b: u64) -> String {
    let mut v = b as f64;
    for unit in ["B", "K", "M", "G"] {
        if v < 1024.0 {
            return format!("{v:.2}{unit}");
        }
        v /= 1024.0;
    }
    format!("{v:.2}T")
}

#[cfg(test)]
mod tests {
    #[test]
    fn process_figures_are_read_from_proc() {
        assert!(super::rss_bytes().is_some_and(|b| b > 0));
        assert!(super::cpu_seconds().is_some());
        assert_eq!(super::human_bytes(1536), "1.50K");
    }
}
