//! Parsers for the Linux `/proc` files the telemetry agent reads, and the rates between two
//! readings. Pure: the agent reads the files and hands the text in.

/// One block device's counters (`/proc/diskstats`, fields as in the kernel's iostats doc).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskCounters {
    /// Major device number.
    pub major: u32,
    /// Minor device number.
    pub minor: u32,
    /// Device name.
    pub name: String,
    /// Reads completed.
    pub reads: u64,
    /// Milliseconds spent reading.
    pub read_ms: u64,
    /// Writes completed.
    pub writes: u64,
    /// Milliseconds spent writing.
    pub write_ms: u64,
    /// I/Os currently in progress.
    pub inflight: u64,
    /// Milliseconds the device had I/O in progress.
    pub io_ticks_ms: u64,
}

/// Every device in a `/proc/diskstats` text; malformed lines are skipped.
pub fn parse_diskstats(text: &str) -> Vec<DiskCounters> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 14 {
                return None;
            }
            let n = |i: usize| f[i].parse::<u64>().ok();
            Some(DiskCounters {
                major: f[0].parse().ok()?,
                minor: f[1].parse().ok()?,
                name: f[2].to_string(),
                reads: n(3)?,
                read_ms: n(6)?,
                writes: n(7)?,
                write_ms: n(10)?,
                inflight: n(11)?,
                io_ticks_ms: n(12)?,
            })
        })
        .collect()
}

/// Await (ms per completed I/O), utilisation (percent) and in-flight I/Os between two
/// readings of one device `elapsed_ms` apart. Await is None when no I/O completed.
pub fn disk_rates(before: &DiskCounters, after: &DiskCounters, elapsed_ms: u64) -> (Option<f64>, f64, f64) {
    let ios = (after.reads + after.writes).saturating_sub(before.reads + before.writes);
    let ms = (after.read_ms + after.write_ms).saturating_sub(before.read_ms + before.write_ms);
    let await_ms = (ios > 0).then(|| ms as f64 / ios as f64);
    let util = after.io_ticks_ms.saturating_sub(before.io_ticks_ms) as f64 * 100.0 / elapsed_ms.max(1) as f64;
    (await_ms, util.min(100.0), after.inflight as f64)
}

/// Busy and total jiffies of all CPUs (`/proc/stat`'s `cpu` line); idle and iowait are idle.
pub fn parse_cpu(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    if v.len() < 5 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v[4];
    Some((total - idle, total))
}

/// CPU busy percent between two `(busy, total)` readings.
pub fn cpu_busy_pct(before: (u64, u64), after: (u64, u64)) -> Option<f64> {
    let total = after.1.checked_sub(before.1).filter(|t| *t > 0)?;
    let busy = after.0.saturating_sub(before.0);
    Some(busy as f64 * 100.0 / total as f64)
}

/// Available memory as a percent of total (`/proc/meminfo`).
pub fn parse_mem_available_pct(text: &str) -> Option<f64> {
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
    };
    let total = field("MemTotal:").filter(|t| *t > 0.0)?;
    Some(field("MemAvailable:")? * 100.0 / total)
}

/// The `some avg10` figure of a pressure-stall file (`/proc/pressure/{cpu,memory,io}`).
pub fn parse_psi_some_avg10(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split_whitespace().find_map(|kv| kv.strip_prefix("avg10=")).and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DISKSTATS: &str = "   7       0 loop0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n \
        254       0 vda 72890 12855 12086714 32810 3901559 465911 209146752 946558 3 154900 1034202 238271 41 557890984 32109 1238470 22723\n\
        garbage\n";

    #[test]
    fn diskstats_fields_and_rates() {
        let d = parse_diskstats(DISKSTATS);
        assert_eq!(d.len(), 2);
        let vda = &d[1];
        assert_eq!((vda.major, vda.minor, vda.name.as_str()), (254, 0, "vda"));
        assert_eq!((vda.reads, vda.read_ms, vda.writes, vda.write_ms), (72_890, 32_810, 3_901_559, 946_558));
        assert_eq!((vda.inflight, vda.io_ticks_ms), (3, 154_900));
        let mut later = vda.clone();
        later.writes += 100;
        later.write_ms += 500;
        later.io_ticks_ms += 250;
        assert_eq!(disk_rates(vda, &later, 1_000), (Some(5.0), 25.0, 3.0));
        assert_eq!(disk_rates(vda, vda, 1_000).0, None);
    }

    #[test]
    fn cpu_memory_and_pressure() {
        let a = parse_cpu("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4 5\n").expect("cpu");
        assert_eq!(a, (200, 1_000));
        let b = parse_cpu("cpu  150 0 150 800 100 0 0 0 0 0\n").expect("cpu");
        assert_eq!(cpu_busy_pct(a, b), Some(50.0));
        assert_eq!(cpu_busy_pct(b, b), None);
        let mem = "MemTotal:       1000 kB\nMemFree: 10 kB\nMemAvailable:    250 kB\n";
        assert_eq!(parse_mem_available_pct(mem), Some(25.0));
        assert_eq!(parse_mem_available_pct("MemTotal: 0 kB\n"), None);
        let psi = "some avg10=1.50 avg60=0.00 avg300=0.12 total=71226779\nfull avg10=0.00 avg60=0.00";
        assert_eq!(parse_psi_some_avg10(psi), Some(1.5));
        assert_eq!(parse_psi_some_avg10(""), None);
    }
}
