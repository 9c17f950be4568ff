//! The tools crate's one integration-test binary: the programs run as a person runs them.

use std::process::Command;

mod e2e;

fn presage() -> Command {
    Command::new(env!("CARGO_BIN_EXE_presage"))
}

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_presage-bench"))
}

#[test]
fn walkthrough_runs_every_step_and_verifies() {
    let out = presage()
        .args(["walkthrough", "--keys", "20000", "--value-bytes", "100"])
        .output()
        .expect("run presage walkthrough");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "walkthrough failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for step in 1..=10 {
        assert!(
            stdout.contains(&format!("\n{step}. ")) || stdout.starts_with(&format!("{step}. ")),
            "step {step} missing:\n{stdout}"
        );
    }
    assert!(stdout.contains("refused with \"corrupt chunk"), "{stdout}");
    assert!(stdout.contains("target range still empty: true"), "{stdout}");
    assert!(stdout.contains("range checksum of the copy matches the source"), "{stdout}");
}

/// `make demo`'s program, smaller and shorter: a load split happens, every sampled key reads
/// back, the nodes stop cleanly.
#[test]
fn cluster_demo_splits_a_hot_shard_and_stops_cleanly() {
    let out = presage()
        .args(["demo", "--nodes", "3", "--keys", "2000", "--seconds", "10", "--workers", "8", "--split-qps", "100"])
        .output()
        .expect("run presage demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for step in 1..=6 {
        assert!(stdout.contains(&format!("{step}. ")), "step {step} missing:\n{stdout}");
    }
    assert!(stdout.contains("] split: shard 1 split at user:"), "no load split seen:\n{stdout}");
    assert!(stdout.contains("1000 of 1000 sampled keys read back"), "{stdout}");
    assert!(stdout.contains("all 3 nodes stopped cleanly"), "{stdout}");
}

#[test]
fn demo_and_walkthrough_refuse_bad_arguments_clearly() {
    let out = presage().args(["walkthrough", "--keys", "10"]).output().expect("run presage walkthrough");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 1000 keys"));
    let out = presage().args(["walkthrough", "--keys", "lots"]).output().expect("run presage walkthrough");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'lots'"));
    let out = presage().args(["demo", "--regions", "4", "--nodes", "3"]).output().expect("run presage demo");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least one node per region"));
    let out = presage().args(["demo", "--read-percent", "101"]).output().expect("run presage demo");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most 100"));
}

#[test]
fn engine_bench_reports_every_figure_with_baselines() {
    let report =
        run_bench_json(&["engine", "--keys", "3000", "--reads", "3000", "--sync-writes", "20", "--value-bytes", "64"]);
    let figures = report["figures"].as_array().expect("figures");
    let names: Vec<&str> = figures.iter().filter_map(|f| f["name"].as_str()).collect();
    for want in [
        "put, sync off",
        "put, sync on",
        "get, random keys",
        "export, compressible",
        "import, compressible",
        "export, incompressible",
        "import, incompressible",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let by_name = |n: &str| figures.iter().find(|f| f["name"] == n).expect("figure");
    assert_eq!(by_name("put, sync on")["baseline"], "put, sync off");
    assert!(by_name("put, sync on")["ratio_to_baseline"].as_f64().expect("ratio") > 0.0);
    let comp = by_name("export, compressible")["compression_ratio"].as_f64().expect("ratio");
    let incomp = by_name("export, incompressible")["compression_ratio"].as_f64().expect("ratio");
    assert!(comp > 2.0, "text-like values compress: {comp}");
    // Keys still compress a little; random values do not.
    assert!(incomp < 1.5 && comp > 2.0 * incomp, "random values do not compress: {incomp} vs {comp}");
    assert_eq!(report["options"]["keys"], 3000);
}

fn run_bench_json(args: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("bench.json");
    let out = bench()
        .args(args)
        .arg("--work-dir")
        .arg(dir.path())
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run presage-bench");
    assert!(out.status.success(), "bench failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("valid json")
}

#[test]
fn replication_bench_pairs_each_figure_with_the_raw_engine() {
    let report = run_bench_json(&["replication", "--writes", "40", "--clients", "1,4", "--value-bytes", "32"]);
    let figures = report["figures"].as_array().expect("figures");
    assert_eq!(figures.len(), 4, "{figures:?}");
    for pair in figures.chunks(2) {
        assert_eq!(pair[0]["name"], "raw engine put (sync)");
        assert_eq!(pair[1]["name"], "replicated put (3 replicas, sync)");
        assert_eq!(pair[1]["baseline"], "raw engine put (sync)");
        assert_eq!(pair[0]["clients"], pair[1]["clients"]);
        assert!(pair[1]["ratio_to_baseline"].as_f64().expect("ratio") > 0.0);
        assert!(pair[1]["p99_us"].as_u64().expect("p99") >= pair[1]["p50_us"].as_u64().expect("p50"));
    }
}

#[test]
fn idle_bench_puts_every_group_to_sleep() {
    let report = run_bench_json(&["idle", "--shards", "20", "--seconds", "1"]);
    let figures = report["figures"].as_array().expect("figures");
    assert_eq!(figures[0]["name"], "quiescence off");
    assert_eq!(figures[0]["quiescent_replicas"], 0);
    assert_eq!(figures[1]["name"], "quiescence on");
    assert_eq!(figures[1]["quiescent_replicas"], 60, "20 shards x 3 nodes asleep");
    assert!(report["cpu_ratio"].as_f64().expect("ratio").is_finite());
}

#[test]
fn bench_refuses_bad_arguments_clearly() {
    let out = bench().args(["replication", "--clients", "0"]).output().expect("run presage-bench");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be positive"));
}
