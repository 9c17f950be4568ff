//! The monitoring files in `tools/monitoring/` against a running node: every alert rule and
//! dashboard expression parses (Debian's `promtool`, which `make test` installs), every
//! metric they name is one the node exports, and the node's exposition passes promtool's lint.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Most bytes of a `/metrics` answer read.
const MAX_METRICS_BYTES: usize = 4 << 20;

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring")
}

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new("promtool");
    cmd.args(args).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    cmd.stderr(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("promtool not found ({e}): install Debian's prometheus package (`make test` does)"));
    let mut input = child.stdin.take().expect("piped");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write to promtool");
    }
    drop(input);
    let out = child.wait_with_output().expect("promtool runs");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The node's `/metrics` body (plain HTTP: an insecure playground).
fn scrape(admin: &str) -> String {
    let mut s = std::net::TcpStream::connect(admin).expect("connect to the admin port");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("send");
    let mut out = Vec::new();
    s.take(MAX_METRICS_BYTES as u64).read_to_end(&mut out).expect("read the answer");
    let text = String::from_utf8(out).expect("UTF-8 metrics");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// The metric names `expr` uses (Presage's and the process's; `up` is Prometheus's own).
fn metric_names(expr: &str, out: &mut BTreeSet<String>) {
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts = (expr[i..].starts_with("presage_") || expr[i..].starts_with("process_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        if starts {
            let end = expr[i..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(expr.len(), |n| i + n);
            out.insert(expr[i..end].to_string());
            i = end;
        } else {
            i += 1;
        }
    }
}

/// The sample names of an exposition.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_string())
        .collect()
}

/// Every expression of the dashboard's panels.
fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(monitoring_dir().join("dashboard.json")).expect("dashboard.json");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    let exprs: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().expect("targets").iter())
        .map(|t| t["expr"].as_str().expect("an expression").to_string())
        .collect();
    assert!(exprs.len() >= panels.len(), "every panel has a query");
    exprs
}

/// Checks the rules, the dashboard and the exposition of the node at `admin`, waiting (up to
/// a minute) for the metrics that appear once the node has heard its first heartbeats.
pub(super) fn check(admin: &str) {
    let rules = monitoring_dir().join("alerts.yml");
    let (ok, out) = promtool(&["check", "rules", rules.to_str().expect("UTF-8 path")], None);
    assert!(ok, "alerts.yml: {out}");
    let rules_text = std::fs::read_to_string(&rules).expect("alerts.yml");
    let exprs = dashboard_exprs();
    // Each dashboard query as a recording rule, so that promtool parses it.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut recorded = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        recorded.push_str(&format!("      - record: presage:dashboard_{i}\n        expr: {}\n", serde_json::json!(e)));
    }
    let recorded_path = dir.path().join("dashboard-rules.yml");
    std::fs::write(&recorded_path, recorded).expect("write");
    let (ok, out) = promtool(&["check", "rules", recorded_path.to_str().expect("UTF-8 path")], None);
    assert!(ok, "a dashboard query does not parse: {out}");

    let mut used = BTreeSet::new();
    metric_names(&rules_text, &mut used);
    for e in &exprs {
        metric_names(e, &mut used);
    }
    assert!(used.contains("presage_node_failure_probability") && used.contains("presage_requests_total"), "{used:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = scrape(admin);
        let have = exported(&text);
        let missing: Vec<&String> = used.iter().filter(|m| !have.contains(*m)).collect();
        if missing.is_empty() {
            break text;
        }
        assert!(Instant::now() < deadline, "the node does not export {missing:?}; it has {have:?}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let (ok, out) = promtool(&["check", "metrics"], Some(&text));
    assert!(ok, "promtool's lint of the node's metrics: {out}");
}

#[test]
fn metric_names_are_read_from_expressions() {
    let mut names = BTreeSet::new();
    metric_names(
        "histogram_quantile(0.99, sum by (le) (rate(presage_request_duration_seconds_bucket[1m]))) / up + rate(process_cpu_seconds_total[1m]) + my_presage_x",
        &mut names,
    );
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(names, ["presage_request_duration_seconds_bucket", "process_cpu_seconds_total"]);
}
