//! `presage-bench run` end to end: a tiny YCSB workload against every target kind in one
//! invocation (the raw engine, a playground the harness starts, and a running cluster by its
//! addresses), the JSON's fields and counts checked; scans and inserts on the cluster; and a
//! cluster that goes away mid-run reported with its errors, not a crash.

use std::process::Command;
use std::time::Duration;

use presage_playground::{Playground, SecurityInfo};
use serde_json::Value;

use super::options;

/// The environment that lets `presage-bench` reach a secure running cluster.
fn cluster_env(security: &SecurityInfo) -> Vec<(&'static str, String)> {
    let mut env = Vec::new();
    if let Some(ca) = &security.ca_cert {
        env.push(("PRESAGE_CA_CERT", ca.display().to_string()));
    }
    if let (Some(user), Some(password)) = (&security.resp_user, &security.resp_password) {
        env.push(("PRESAGE_USER", user.clone()));
        env.push(("PRESAGE_PASSWORD", password.clone()));
    }
    env
}

fn bench(
    args: &[&str],
    dir: &std::path::Path,
    name: &str,
    env: &[(&'static str, String)],
) -> (std::process::Child, std::path::PathBuf) {
    let json = dir.join(format!("{name}.json"));
    let child = Command::new(env!("CARGO_BIN_EXE_presage-bench"))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .arg("run")
        .args(args)
        .arg("--work-dir")
        .arg(dir)
        .arg("--json")
        .arg(&json)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("presage-bench starts");
    (child, json)
}

fn finish(child: std::process::Child, json: &std::path::Path) -> Value {
    let out = child.wait_with_output().expect("presage-bench runs");
    assert!(
        out.status.success(),
        "presage-bench failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&std::fs::read(json).expect("json written")).expect("valid json")
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// Checks one phase: every operation accounted for, per type and per second.
fn check_phase(p: &Value, expect_ops: u64, kinds: &[&str]) {
    assert_eq!(u(&p["ops"]), expect_ops, "{p}");
    assert_eq!(u(&p["errors"]), 0, "{p}");
    assert!(p["aborted"].is_null(), "{p}");
    assert!(p["throughput_ops_per_sec"].as_f64().expect("throughput") > 0.0);
    let ops = p["operations"].as_object().expect("operations");
    let names: Vec<&str> = ops.keys().map(String::as_str).collect();
    assert_eq!(names, kinds, "{p}");
    let mut sum = 0;
    for (name, o) in ops {
        sum += u(&o["count"]);
        for key in ["p50_us", "p95_us", "p99_us", "p999_us", "max_us"] {
            assert!(o[key].is_u64(), "{name}.{key} in {o}");
        }
        assert!(u(&o["p50_us"]) <= u(&o["p99_us"]) && u(&o["p99_us"]) <= u(&o["max_us"]), "{name}: {o}");
        if name == "read" || name == "read-modify-write" {
            assert_eq!(u(&o["misses"]), 0, "every record chosen exists: {o}");
        }
    }
    assert_eq!(sum, expect_ops);
    let per_second: u64 = p["series"].as_array().expect("series").iter().map(|s| u(&s["ops"])).sum();
    assert_eq!(per_second, expect_ops);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ycsb_runs_against_every_target_kind_and_reports_a_cluster_that_goes_away() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut pg = Playground::start(&options(&dir.path().join("cluster"), 3)).await.expect("playground starts");
    let addrs = pg.cluster.native_addrs().join(",");
    let env = cluster_env(&pg.cluster.security);
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).expect("work dir");

    // Workload A on all three kinds at once; the first is the baseline.
    let plot = work.join("a.svg");
    let (child, json) = bench(
        &[
            "--workload",
            "a",
            "--records",
            "300",
            "--ops",
            "600",
            "--threads",
            "3",
            "--target",
            "raw-engine",
            "--target",
            "playground",
            "--target",
            &addrs,
            "--plot",
            plot.to_str().expect("utf-8"),
        ],
        &work,
        "a",
        &env,
    );
    let report = tokio::task::spawn_blocking(move || finish(child, &json)).await.expect("joins");
    assert_eq!(report["options"]["workload"], "a");
    assert_eq!(report["mix"]["distribution"], "zipfian");
    let targets = report["targets"].as_array().expect("targets");
    let names: Vec<&str> = targets.iter().map(|t| t["target"].as_str().expect("name")).collect();
    assert_eq!(names, ["raw-engine", "playground", addrs.as_str()]);
    for (i, t) in targets.iter().enumerate() {
        assert!(t["error"].is_null(), "{t}");
        check_phase(&t["load"], 300, &["insert"]);
        check_phase(&t["run"], 600, &["read", "update"]);
        if i == 0 {
            assert!(t["vs_baseline"].is_null());
        } else {
            let r = &t["vs_baseline"];
            assert_eq!(r["baseline"], "raw-engine");
            assert!(r["throughput"].as_f64().expect("ratio") > 0.0, "{r}");
            assert!(r["operations"]["read"]["p99"].as_f64().expect("ratio") > 0.0, "{r}");
        }
    }
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(svg.starts_with("<svg") && svg.contains("p99 latency") && svg.contains("raw-engine"), "{svg:.300}");

    // Workload E (scans and inserts) on the running cluster.
    let (child, json) = bench(
        &["--workload", "e", "--records", "300", "--ops", "200", "--threads", "2", "--target", &addrs],
        &work,
        "e",
        &env,
    );
    let report = tokio::task::spawn_blocking(move || finish(child, &json)).await.expect("joins");
    let run = &report["targets"][0]["run"];
    check_phase(run, 200, &["insert", "scan"]);
    assert!(u(&run["operations"]["scan"]["count"]) > 150, "95% scans: {run}");

    // A cluster that goes away mid-run: errors counted, the run stops, the program reports.
    let (child, json) = bench(
        &[
            "--workload",
            "c",
            "--records",
            "100",
            "--ops",
            "100000000",
            "--duration",
            "120",
            "--threads",
            "2",
            "--max-failing-secs",
            "3",
            "--request-timeout-ms",
            "1000",
            "--target",
            &addrs,
        ],
        &work,
        "gone",
        &env,
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    for n in pg.cluster.nodes.clone() {
        pg.kill(n.id);
    }
    let report = tokio::task::spawn_blocking(move || finish(child, &json)).await.expect("joins");
    let run = &report["targets"][0]["run"];
    assert!(u(&run["errors"]) > 0, "{run}");
    let aborted = run["aborted"].as_str().unwrap_or_else(|| panic!("the run stops early: {run}"));
    assert!(aborted.contains("no operation succeeded"), "{aborted}");
    assert!(run["elapsed_secs"].as_f64().expect("secs") < 100.0, "{run}");
}
