//! The tools crate's one integration-test binary: the programs run as a person runs them.
//!
//! The programs run as processes; `tests/e2e/`: multi-process playgrounds (`migrate.rs`: a node
//! whose disk degrades gradually is evacuated to the spare through verified joint-consensus swaps
//! before it is killed, with no failed write and every acknowledged write read back; `bench.rs`:
//! YCSB against all three target kinds in one invocation, a cluster killed mid-run), (kill -9 of
//! the busiest node with acknowledged writes checked after its restart, through `presage-client`
//! and a Redis client; bad RESP, admin JSON and config; `presage-ctl`; `monitoring.rs`: the alert
//! rules and dashboard parsed by promtool, every metric they name exported by a running node).

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

/// Tidy: every Rust file of the workspace (crate roots, modules, tests, fuzz targets) opens
/// with its `//!` doc, which says what it is for.
#[test]
fn every_crate_and_module_starts_with_its_doc() {
    fn walk(dir: &std::path::Path, missing: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !matches!(name.as_str(), "target" | "corpus" | "artifacts" | ".git" | "node_modules") {
                    walk(&path, missing);
                }
            } else if name.ends_with(".rs") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                if !text.starts_with("//!") {
                    missing.push(path.display().to_string());
                }
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut missing = Vec::new();
    for top in ["engine", "replication", "shardmgr", "pfa", "tools", "tests", "scripts"] {
        walk(&root.join(top), &mut missing);
    }
    assert!(missing.is_empty(), "files without a //! doc: {missing:#?}");
}

/// Tidy: no module imports a module that imports it back. For every crate of the workspace,
/// each module's references to `crate::a::b` and `super::x` (outside comments and test
/// modules) are lifted to the sibling modules under their common parent (a module may use its
/// own children or ancestors); the strongly connected components of that graph must all be
/// single modules.
#[test]
fn no_module_imports_one_that_imports_it_back() {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};
    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    /// A file's module path inside its crate (`None` for binaries).
    fn module_of(src: &Path, file: &Path) -> Option<Vec<String>> {
        let rel = file.strip_prefix(src).ok()?.with_extension("");
        let mut parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
        if parts.first().is_some_and(|p| p == "bin") {
            return None;
        }
        if parts.last().is_some_and(|p| matches!(p.as_str(), "mod" | "lib" | "main")) {
            parts.pop();
        }
        Some(parts)
    }
    /// The module paths named after each `prefix` (`crate::a::b`, `super::x`), brace groups
    /// (`crate::{a::X, b}`) included; each at most three segments long.
    fn idents(text: &str, prefix: &str) -> Vec<Vec<String>> {
        fn segment(s: &str) -> &str {
            let end = s.find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')).unwrap_or(s.len());
            &s[..end]
        }
        fn path(s: &str) -> Vec<String> {
            s.split("::").map(segment).take_while(|seg| !seg.is_empty()).take(3).map(String::from).collect()
        }
        let mut out = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find(prefix) {
            let before = if at == 0 { b' ' } else { rest.as_bytes()[at - 1] };
            rest = &rest[at + prefix.len()..];
            if before.is_ascii_alphanumeric() || before == b'_' {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                // Top-level items of the group, up to its closing brace.
                let (mut depth, mut item) = (0usize, String::new());
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            out.push(path(item.trim()));
                            item.clear();
                            continue;
                        }
                        _ => {}
                    }
                    item.push(c);
                }
                out.push(path(item.trim()));
            } else {
                out.push(path(rest));
            }
        }
        out.retain(|p| !p.is_empty());
        out
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cycles = Vec::new();
    let mut crates = Vec::new();
    for top in ["engine", "replication", "shardmgr", "pfa", "tools", "tests"] {
        let mut stack = vec![root.join(top)];
        while let Some(dir) = stack.pop() {
            if dir.join("Cargo.toml").exists() && dir.join("src").is_dir() && !dir.ends_with("fuzz") {
                crates.push(dir.join("src"));
            }
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let p = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                if p.is_dir() && !matches!(name.as_str(), "src" | "target" | "fuzz" | "tests") {
                    stack.push(p);
                }
            }
        }
    }
    for src in crates {
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let modules: BTreeSet<Vec<String>> = files.iter().filter_map(|f| module_of(&src, f)).collect();
        let longest_module = |mut path: Vec<String>| {
            while !path.is_empty() && !modules.contains(&path) {
                path.pop();
            }
            path
        };
        let mut lifted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for f in &files {
            let Some(me) = module_of(&src, f) else { continue };
            let text = std::fs::read_to_string(f).unwrap_or_default();
            let text = text.split("#[cfg(test)]").next().unwrap_or_default();
            let code: String =
                text.lines().map(|l| l.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n");
            let mut targets: Vec<Vec<String>> = idents(&code, "crate::");
            for sup in idents(&code, "super::") {
                let mut t = me.clone();
                t.pop();
                t.extend(sup);
                targets.push(t);
            }
            for t in targets {
                let t = longest_module(t);
                let common = me.iter().zip(&t).take_while(|(a, b)| a == b).count();
                if t.is_empty() || common == me.len() || common == t.len() {
                    continue; // itself, an ancestor or a descendant
                }
                lifted.entry(me[..=common].join("/")).or_default().insert(t[..=common].join("/"));
            }
        }
        // Mutual reachability between siblings.
        let reach = |from: &String| {
            let mut seen = BTreeSet::new();
            let mut todo = vec![from.clone()];
            while let Some(x) = todo.pop() {
                for y in lifted.get(&x).into_iter().flatten() {
                    if seen.insert(y.clone()) {
                        todo.push(y.clone());
                    }
                }
            }
            seen
        };
        for a in lifted.keys() {
            for b in reach(a) {
                if a < &b && reach(&b).contains(a) {
                    cycles.push(format!("{}: {a} <-> {b}", src.display()));
                }
            }
        }
    }
    assert!(cycles.is_empty(), "modules that import each other (directly or around a cycle): {cycles:#?}");
}

/// `presage cert` and `presage user` make what a secure node loads: a CA, a node certificate
/// naming its id and hosts, a client certificate, users and tokens stored as hashes; existing
/// files are kept unless asked; bad input is refused clearly.
#[test]
fn a_node_with_log_format_json_writes_one_json_object_per_line() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("temp dir");
    let mut node = presage()
        .args(["start", "--node-id", "1", "--bootstrap", "--insecure"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--native-listen", "127.0.0.1:0", "--raft-listen", "127.0.0.1:0"])
        .args(["--set", "resp-listen=\"\"", "--set", "admin-listen=\"\"", "--set", "log-format=\"json\""])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start a node");
    let stdout = node.stdout.take().expect("piped");
    let lines: Vec<String> = BufReader::new(stdout).lines().take(3).map(|l| l.expect("a log line")).collect();
    let _ = node.kill();
    let _ = node.wait();
    assert_eq!(lines.len(), 3, "{lines:?}");
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{line}");
        assert!(v["fields"]["message"].is_string(), "{line}");
    }
    assert!(lines.iter().any(|l| l.contains("store opened")), "{lines:?}");
}

#[test]
fn cert_and_user_commands_make_a_secure_nodes_material() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    let run = |args: &[&str]| {
        let out = presage().args(args).output().expect("run presage");
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), String::from_utf8_lossy(&out.stdout).trim().to_string(), text)
    };
    let c = certs.to_str().expect("utf-8");
    let (ok, _, text) = run(&["cert", "create-ca", "--certs-dir", c]);
    assert!(ok, "{text}");
    let (ok, _, text) = run(&["cert", "create-ca", "--certs-dir", c]);
    assert!(!ok && text.contains("exists already"), "{text}");
    let (ok, _, text) =
        run(&["cert", "create-node", "--node-id", "4", "--host", "10.0.0.4", "--host", "db4", "--certs-dir", c]);
    assert!(ok && text.contains("node 4"), "{text}");
    let (ok, _, text) = run(&["cert", "create-node", "--node-id", "5", "--certs-dir", c]);
    assert!(!ok && text.contains("--host"), "a node certificate needs its hosts: {text}");
    let (ok, _, text) = run(&["cert", "create-client", "app", "--certs-dir", c]);
    assert!(ok && certs.join("client.app.crt").exists() && certs.join("client.app.key").exists(), "{text}");
    let tls = presage_security::tls::NodeTls::load(&certs, 4).expect("node 4 loads its material");
    drop(tls);
    let wrong = presage_security::tls::NodeTls::load(&certs, 5).err().expect("not node 5's certificate");
    assert!(wrong.to_string().contains("names node 4"), "{wrong}");

    let users = dir.path().join("users.toml");
    let u = users.to_str().expect("utf-8");
    let (ok, _, text) =
        run(&["user", "add", "app", "--role", "read-write", "--password", "long-enough", "--users-file", u]);
    assert!(ok, "{text}");
    let (ok, _, text) = run(&["user", "add", "x", "--role", "admin", "--password", "long-enough", "--users-file", u]);
    assert!(!ok && text.contains("unknown role"), "{text}");
    let (ok, token, text) = run(&["user", "token", "ops", "--role", "operator", "--users-file", u]);
    assert!(ok && token.len() == 64, "{text}");
    let creds = presage_security::Credentials::load(&users).expect("users load");
    assert_eq!(creds.check_password("app", "long-enough"), Ok(presage_client::proto::Role::ReadWrite));
    assert_eq!(creds.check_token(&token), Ok(("ops", presage_client::proto::Role::Operator)));
    let stored = std::fs::read_to_string(&users).expect("users file");
    assert!(!stored.contains("long-enough") && !stored.contains(&token), "only hashes are stored");
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
    assert!(
        stdout.contains("6. Second act (a failing disk) skipped: no group member has a spare node"),
        "three nodes leave no spare for the second act:\n{stdout}"
    );
}

/// `presage-bench scenario failing-node` in both modes, shortened: each mode's figures come
/// out under the documented JSON keys, side by side on stdout, and drawn. (What the figures
/// must be is the e2e migration test's business; a bench reports, it does not assert.)
#[test]
fn failing_node_scenario_reports_both_modes_with_the_documented_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (json, plot) = (dir.path().join("s.json"), dir.path().join("s.svg"));
    let out = bench()
        .args(["scenario", "failing-node", "--mode", "both", "--keys", "500", "--shards", "3", "--workers", "2"])
        .args(["--warmup-secs", "30", "--ramp-secs", "20", "--after-kill-secs", "5"])
        .arg("--json")
        .arg(&json)
        .arg("--plot")
        .arg(&plot)
        .output()
        .expect("run presage-bench scenario");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scenario failed: {stdout}\n{stderr}");
    assert!(stdout.contains("predictive") && stdout.contains("reactive"), "{stdout}");
    assert!(stderr.contains("disk starts degrading") && stderr.contains("is killed (SIGKILL)"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("json parses");
    for mode in ["predictive", "reactive"] {
        let r = &report[mode];
        for key in [
            "failed_requests",
            "p99_ms_during_event",
            "p99_ms_steady",
            "unavailable_shard_seconds",
            "bytes_moved",
            "warning_lead_seconds",
        ] {
            assert!(r.get(key).is_some(), "{mode}: no {key} in {r}");
        }
        assert!(r["requests"].as_u64().unwrap_or(0) > 1_000, "{mode}: {r}");
        assert!(r["p99_ms_steady"].as_f64().unwrap_or(0.0) > 0.0, "{mode}: {r}");
        assert!(r["kill_at_secs"].as_f64().unwrap_or(0.0) >= 50.0, "{mode}: killed after warm-up and ramp: {r}");
        assert_eq!(r["mode"], mode);
    }
    let svg = std::fs::read_to_string(&plot).expect("plot");
    assert!(svg.contains("<svg") && svg.contains("p99 latency per second"), "{svg:.200}");
}

/// `presage-bench scenario noise`, shortened to the catch-up noise: the peer it kills and
/// restarts falls behind the scenario's short log and is sent snapshots, and the report comes
/// out under its documented keys. (Whether a warning or evacuation followed is the figure the
/// scenario reports, not this test's business.)
#[test]
fn noise_scenario_makes_a_peer_catch_up_by_snapshots_and_reports_its_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("n.json");
    let out = bench()
        .args(["scenario", "noise", "--noise", "catch-up", "--keys", "500", "--shards", "3", "--workers", "4"])
        .args(["--warmup-secs", "10", "--gap-secs", "5", "--json"])
        .arg(&json)
        .output()
        .expect("run presage-bench scenario noise");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "noise failed: {stdout}\n{stderr}");
    assert!(stderr.contains("noise: catch-up on node") && stdout.contains("no false alarm"), "{stdout}\n{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("json parses");
    for key in ["warnings", "risk_migrations", "evacuations", "sheds", "longest_shed_secs", "p99_ms_noise"] {
        assert!(r.get(key).is_some(), "no {key} in {r}");
    }
    assert_eq!(r["events"].as_array().map(Vec::len), Some(1), "{r}");
    assert!(r["snapshot_bytes_sent"].as_u64().unwrap_or(0) > 0, "the restarted peer caught up by snapshots: {r}");
    assert!(r["requests"].as_u64().unwrap_or(0) > 500, "{r}");
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
    for (args, says) in [
        (&["run", "--workload", "a", "--target", "raw-engine", "--threads", "0"][..], "--threads must be in"),
        (&["run", "--workload", "z", "--target", "raw-engine"][..], "invalid value 'z'"),
        (&["run", "--workload", "a", "--target", "nowhere"][..], "raw-engine, three-engines, playground"),
        (&["run", "--workload", "a"][..], "--target"),
        (&["peers", "--target", "raw-engine", "--connections", "0"][..], "--connections must be in"),
        (&["peers", "--target", "raw-engine", "--rate", "0"][..], "--rate must be in"),
        (&["peers", "--target", "etcd:nowhere"][..], "bad address \"nowhere\""),
        (&["scenario", "failing-node", "--nodes", "3"][..], "at least 4 nodes"),
        (&["scenario", "failing-node", "--mode", "sideways"][..], "invalid value 'sideways'"),
        (&["scenario", "failing-node", "--read-percent", "101"][..], "at most 100"),
    ] {
        let out = bench().args(args).output().expect("run presage-bench");
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // A cluster that is not there: the target is reported unusable, the program says so.
    let out = bench()
        .args(["run", "--workload", "c", "--records", "10", "--ops", "10", "--target", "127.0.0.1:1"])
        .output()
        .expect("run presage-bench");
    assert!(!out.status.success());
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("unusable") && stderr.contains("127.0.0.1:1 was unusable"), "{stdout}\n{stderr}");
}

fn ctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_presage-ctl"))
}

/// The package's directory as this test run was started from (`cargo test` sets it at run
/// time; a compile-time path would point into whichever clone built the shared binary).
fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string())
}

fn backblaze(file: &str) -> String {
    format!("{}/../pfa/data/backblaze/{file}", manifest_dir())
}

const SEAGATE: &str = "seagate_ST8000NM0055_lastday_raw.csv";
const TOSHIBA: &str = "toshiba_MQ01ABF050_last10days_raw.csv";

fn pfa_json(args: &[&str]) -> serde_json::Value {
    let out = ctl().args(args).arg("--json").output().expect("run presage-ctl");
    assert!(out.status.success(), "presage-ctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

const EVAL_KEYS: [&str; 10] = [
    "precision",
    "recall",
    "f1",
    "fpr",
    "pr_auc",
    "roc_auc",
    "recall_at_fpr_1pct",
    "mean_lead_time_days",
    "drives",
    "failed_drives",
];

fn keys_of(v: &serde_json::Value) -> Vec<String> {
    let mut keys: Vec<String> = v.as_object().expect("an object").keys().cloned().collect();
    keys.sort();
    keys
}

/// The targets on Seagate 8 TB drives, drive-split: PR-AUC above 0.5 and recall at
/// 1% FPR above 0.6, where the Backblaze rule scores about 0.1. Training is seeded and
/// single-threaded, so the figures are the same on every run.
#[test]
fn pfa_model_beats_the_backblaze_rule_on_held_out_seagate_drives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("seagate.model");
    let model = model.to_str().expect("utf-8 path");
    let trained = pfa_json(&["pfa", "train", "--format", "backblaze", "--csv", &backblaze(SEAGATE), "--out", model]);
    assert!(trained["trained_on"]["train_failed_units"].as_u64().expect("count") > 50, "{trained}");
    let e = pfa_json(&["pfa", "eval", "--model", model, "--csv", &backblaze(SEAGATE)]);
    let mut want: Vec<String> = EVAL_KEYS.iter().map(|k| k.to_string()).chain(["baseline_rule".to_string()]).collect();
    want.sort();
    assert_eq!(keys_of(&e), want);
    let mut rule_keys: Vec<String> = EVAL_KEYS.iter().map(|k| k.to_string()).collect();
    rule_keys.sort();
    assert_eq!(keys_of(&e["baseline_rule"]), rule_keys);
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"));
    // Only held-out drives are scored: 14,679 drives in the file, 30% held out.
    let drives = e["drives"].as_u64().expect("drives");
    assert!((3_800..=5_200).contains(&drives), "{drives} drives evaluated");
    assert_eq!(e["drives"], e["baseline_rule"]["drives"]);
    assert!(f(&e, "pr_auc") > 0.5, "{e}");
    assert!(f(&e, "recall_at_fpr_1pct") > 0.6, "{e}");
    assert!(f(&e["baseline_rule"], "pr_auc") < 0.2, "{e}");
    assert!(e["mean_lead_time_days"].is_null(), "single-day data has no lead time: {e}");
}

/// Multi-day data: lead time is measured, and a model trained on Seagate columns scores a
/// Toshiba file whose SMART columns differ (missing columns are missing values).
#[test]
fn pfa_measures_lead_time_and_reads_files_with_other_columns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let toshiba_model = dir.path().join("toshiba.model");
    let toshiba_model = toshiba_model.to_str().expect("utf-8 path");
    pfa_json(&["pfa", "train", "--csv", &backblaze(TOSHIBA), "--horizon-days", "10", "--out", toshiba_model]);
    let e = pfa_json(&["pfa", "eval", "--model", toshiba_model, "--csv", &backblaze(TOSHIBA)]);
    let lead = e["mean_lead_time_days"].as_f64().expect("lead time on multi-day data");
    assert!((0.0..=9.0).contains(&lead), "{e}");
    assert!(e["pr_auc"].as_f64().expect("pr_auc") > e["baseline_rule"]["pr_auc"].as_f64().expect("pr_auc"), "{e}");

    let seagate_model = dir.path().join("seagate.model");
    let seagate_model = seagate_model.to_str().expect("utf-8 path");
    pfa_json(&["pfa", "train", "--csv", &backblaze(SEAGATE), "--out", seagate_model]);
    let out =
        ctl().args(["pfa", "eval", "--model", seagate_model, "--csv", &backblaze(TOSHIBA)]).output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("not in this file"), "{text}");
    assert!(text.contains("534 drives (79 failed) evaluated"), "{text}");
}

#[test]
fn pfa_refuses_bad_input_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "date,serial_number,failure,smart_5_raw\n2019-01-01,A,0,lots\n").expect("write");
    let model = dir.path().join("m.model");
    let run = |args: &[&str]| {
        let out = ctl().args(args).output().expect("run");
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&["pfa", "train", "--csv", bad.to_str().expect("path"), "--out", model.to_str().expect("path")]);
    assert!(err.contains("line 2") && err.contains("not a number"), "{err}");
    let err = run(&["pfa", "eval", "--model", bad.to_str().expect("path"), "--csv", &backblaze(SEAGATE)]);
    assert!(err.contains("not a Presage model file"), "{err}");
    let err = run(&["pfa", "eval", "--model", "/nonexistent.model", "--csv", &backblaze(SEAGATE)]);
    assert!(err.contains("/nonexistent.model"), "{err}");
    let err = run(&["pfa", "train", "--csv", &backblaze(SEAGATE), "--horizon-days", "0", "--out", "x"]);
    assert!(err.contains("horizon-days"), "{err}");
    let err = run(&["pfa", "prior", "--lanl", &backblaze(SEAGATE), "--out", model.to_str().expect("path")]);
    assert!(err.contains("not a LANL failure file"), "{err}");
}

/// `pfa prior` recomputes the shipped failure-history table from the LANL file.
#[test]
fn pfa_prior_from_the_lanl_records_matches_the_shipped_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("prior.json");
    let lanl = format!("{}/../pfa/data/lanl/lanl_failures_1996_2005.csv", manifest_dir());
    let run =
        ctl().args(["pfa", "prior", "--lanl", &lanl, "--out", out.to_str().expect("path")]).output().expect("run");
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(text.contains("23613 failure events on 3576 nodes") && text.contains("PER NODE-DAY"), "{text}");
    let written = std::fs::read_to_string(&out).expect("written");
    let shipped = include_str!("../../pfa/models/failure-prior.json");
    assert_eq!(written, shipped, "the shipped table is the one the data gives");
}
