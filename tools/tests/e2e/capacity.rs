//! Capacity advice on a real cluster (seeds 001/004): while a client writes, `presage-ctl
//! capacity` shows every node's bytes growing and the date each fills its (small)
//! `capacity-bytes`, with the advice for each region; it needs a credential; and after the
//! shard manager's node is killed its successor advises from the history persisted in the
//! meta shard. On the way, `presage-ctl shards` shows the written range's p99, errors and risk
//! (seed 004), `presage-ctl shifts` lists the gradual shifts and `presage-ctl pfa report` the
//! feedback loop, each needing a credential.

use std::process::Command;
use std::sync::Arc;

use presage_client::Client;
use presage_playground::Playground;

use super::options;
use super::pfa::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_advice_projects_growing_data_and_survives_a_manager_fail_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = options(dir.path(), 3);
    opts.overrides.extend([
        "capacity-bytes=\"64MiB\"".to_string(),
        "capacity-qps=2000".to_string(),
        "server.shard-manager.heartbeat-interval-ms=\"200ms\"".to_string(),
        "server.shard-manager.capacity-interval-ms=\"1s\"".to_string(),
        "server.shard-manager.capacity-horizon-ms=\"1d\"".to_string(),
    ]);
    let mut pg = Playground::start(&opts).await.expect("playground starts");
    let security = pg.cluster.security.clone();
    let ctl = |admin: &str, args: &[&str], token: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_presage-ctl"));
        cmd.args(["--admin", admin]);
        if let Some(ca) = &security.ca_cert {
            cmd.arg("--ca-cert").arg(ca);
        }
        if let (true, Some(t)) = (token, &security.admin_token) {
            cmd.args(["--token", t]);
        }
        let out = cmd.args(args).output().expect("run presage-ctl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let admin = pg.admin(1).expect("admin").client();
    let manager = eventually(60, "a shard manager runs", || admin.cluster().ok().map(|c| c.manager)).await;

    // A client writes 64 KiB values; every node's bytes grow.
    let client = Arc::new(Client::connect(&pg.cluster.native_addrs(), pg.client_config()).await.expect("client"));
    let writer = {
        let client = Arc::clone(&client);
        tokio::spawn(async move {
            let value = vec![7u8; 64 << 10];
            for i in 0..400u32 {
                client.put(format!("cap{i:05}").as_bytes(), &value).await.expect("put");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
    };
    let asked = pg.admin(2).expect("admin").addr.clone();
    // Per-range KPIs and risk (seed 004) while the writer runs: the written range's leader
    // reports its p99, every row carries a risk with its parts; the shifts are listed.
    let row = eventually(60, "the written range reports its p99", || {
        let (ok, out, _) = ctl(&asked, &["--json", "shards", "--key", "cap00001"], true);
        let v: serde_json::Value = serde_json::from_str(&out).ok().filter(|_| ok)?;
        let row = v.as_array()?.first()?.clone();
        (row["load"]["p99_ms"].as_f64()? > 0.0).then_some(row)
    })
    .await;
    let risk = &row["risk"];
    for part in ["risk", "nodes", "latency", "errors"] {
        assert!(risk[part].as_f64().is_some_and(|r| (0.0..=1.0).contains(&r)), "{part}: {row}");
    }
    assert!(row["load"]["errors_per_sec"].as_f64().is_some(), "{row}");
    let (ok, out, err) = ctl(&asked, &["shards", "--top", "2", "--by", "risk"], true);
    assert!(ok && out.contains("P99 MS") && out.contains("RISK"), "{out}{err}");
    let (ok, out, err) = ctl(&asked, &["--json", "shifts"], true);
    assert!(ok && serde_json::from_str::<serde_json::Value>(&out).is_ok_and(|v| v.is_array()), "{out}{err}");
    let (ok, out, err) = ctl(&asked, &["pfa", "report", "--horizon", "10m"], true);
    assert!(ok && out.contains("PRECEDED FAILURE") && out.contains("eagerness"), "{out}{err}");
    let (ok, out, err) = ctl(&asked, &["--json", "pfa", "report"], true);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}{err}"));
    assert!(ok && report["horizon_ms"] == 3_600_000 && report["mitigations"].is_array(), "{report}");
    if security.admin_token.is_some() {
        for args in [&["shifts"][..], &["pfa", "report"]] {
            let (ok, out, err) = ctl(&asked, args, false);
            assert!(!ok && !err.is_empty(), "read without a token: {out}{err}");
        }
    }
    let report = eventually(90, "every node fills within the day", || {
        let (ok, out, _) = ctl(&asked, &["--json", "capacity"], true);
        let v: serde_json::Value = serde_json::from_str(&out).ok().filter(|_| ok)?;
        let nodes = v["nodes"].as_array()?;
        let filling = nodes
            .iter()
            .all(|n| n["disk"]["per_day"].as_f64().is_some_and(|d| d > 0.0) && n["disk"]["crosses_at_ms"].is_u64());
        (nodes.len() == 3 && filling && v["history_points"].as_u64() >= Some(5)).then_some(v)
    })
    .await;
    writer.await.expect("writer");
    let regions = report["regions"].as_array().expect("regions");
    assert_eq!(regions.len(), 3, "{report}");
    for r in regions {
        assert_eq!(r["nodes"], 1, "{r}");
        // 64 MiB each, filling within the day: more nodes are needed.
        assert!(r["needed_nodes"].as_u64() > Some(1) && r["add_nodes"].as_u64() > Some(1), "{r}");
        assert!(r["advice"].as_str().is_some_and(|a| a.contains("spare")), "{r}");
    }
    let usable_qps = report["nodes"][0]["load"]["capacity"].as_f64().expect("capacity");
    assert!((usable_qps - 1_400.0).abs() < 1e-6, "70% of 2,000/s: {report}");
    let (ok, out, err) = ctl(&asked, &["capacity"], true);
    assert!(ok && out.contains("FULL AT") && out.contains("add "), "{out}{err}");
    if security.admin_token.is_some() {
        let (ok, out, err) = ctl(&asked, &["capacity"], false);
        assert!(!ok && !err.is_empty(), "read without a token: {out}{err}");
    }

    // The manager's node dies: its successor reads the persisted history.
    let points = report["history_points"].as_u64().expect("points");
    pg.kill(manager);
    let survivor = if manager == 2 { pg.admin(3) } else { pg.admin(2) }.expect("admin").addr.clone();
    let again = eventually(60, "a successor advises from the persisted history", || {
        let (ok, out, _) = ctl(&survivor, &["--json", "capacity"], true);
        let v: serde_json::Value = serde_json::from_str(&out).ok().filter(|_| ok)?;
        (v["history_points"].as_u64()? >= points).then_some(v)
    })
    .await;
    eprintln!("capacity history: {points} buckets before the fail-over, {} after", again["history_points"]);
}
