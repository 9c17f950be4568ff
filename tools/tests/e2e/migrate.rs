//! Proactive migration on a real cluster (design.md §6): one node's disk degrades gradually
//! (engine fault injection), the failure analysis's risk for it rises, the shard manager
//! moves its leaderships away, fills verified copies on the spare node and cuts over; the
//! node is then killed. A client writing all along sees no failed request and loses no
//! acknowledged write. The feedback report holds the evacuation and the node's warnings.

use std::sync::Arc;
use std::time::Duration;

use presage_client::Client;
use presage_ctl::AdminClient;
use presage_playground::Playground;

use super::load::Load;
use super::options;
use super::pfa::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_degrading_node_is_evacuated_before_it_is_killed_and_no_request_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Four regions, one node each: three form the group (the first to join), the fourth is
    // the spare.
    let mut opts = options(dir.path(), 4);
    opts.regions = 4;
    opts.overrides.extend([
        // Five samples a second: the detectors' warm-up takes 24 s.
        "server.shard-manager.heartbeat-interval-ms=\"200ms\"".to_string(),
        "server.shard-manager.risk-warn=0.5".to_string(),
        "server.shard-manager.risk-act=0.6".to_string(),
    ]);
    let mut pg = Playground::start(&opts).await.expect("playground starts");
    let nodes = pg.cluster.nodes.clone();
    let admin = pg.admin(nodes[0].id).expect("admin").client();

    let client = Arc::new(Client::connect(&pg.cluster.native_addrs(), pg.client_config()).await.expect("client"));
    let load = Load::start(Arc::clone(&client), "k", 1000, false);
    let group = |admin: &AdminClient| -> Vec<u64> {
        let groups: serde_json::Value = admin.get("/v1/groups").expect("groups");
        groups[0]["nodes"].as_array().map(|n| n.iter().filter_map(|x| x.as_u64()).collect()).unwrap_or_default()
    };
    let members = group(&admin);
    assert_eq!(members.len(), 3, "one group of three; the fourth node is a spare");
    // Which node is the spare depends on the order the nodes joined in.
    let spare = nodes.iter().map(|n| n.id).find(|id| !members.contains(id)).expect("a spare");
    let failing = members.iter().copied().find(|id| *id != nodes[0].id).expect("a member not asked");

    // Warm-up: the detectors learn each node's normal.
    tokio::time::sleep(Duration::from_secs(35)).await;

    // The failing node's disk degrades: synced writes slow from 0 to 1 s over 60 s.
    let ramp = serde_json::json!({"latency-start-us": 0, "latency-end-us": 1_000_000, "ramp-ms": 60_000});
    pg.admin(failing)
        .expect("admin")
        .client()
        .put_raw("/v1/faults", &serde_json::json!({"sync": ramp, "write": ramp}))
        .expect("set the ramp");
    let started = tokio::time::Instant::now();
    let migration = |admin: &AdminClient| -> Option<serde_json::Value> {
        let all: serde_json::Value = admin.get("/v1/migrations").ok()?;
        all.as_array()?.iter().find(|m| m["node"] == failing).cloned()
    };
    let admin_any = |nodes: &[presage_playground::PlaygroundNode]| {
        nodes.iter().filter(|n| n.id != failing).map(|n| pg.admin(n.id).expect("admin").client()).collect::<Vec<_>>()
    };
    let admins = admin_any(&nodes);
    let first = eventually(90, "a migration of the failing node starts", || {
        admins.iter().find_map(|a| migration(a).filter(|m| m["target"] == spare))
    })
    .await;
    eprintln!("migration started {:?} into the ramp: {first}", started.elapsed());
    let evacuated = eventually(120, "the failing node is evacuated", || {
        admins.iter().find_map(|a| migration(a).filter(|m| m["stage"] == "evacuated"))
    })
    .await;
    eprintln!("evacuated {:?} into the ramp: {evacuated}", started.elapsed());
    assert_eq!(evacuated["cause"], "risk", "{evacuated}");
    assert!(
        evacuated["shards_copied"].as_u64().unwrap_or(0) >= 2,
        "the meta shard and shard 1 were copied: {evacuated}"
    );
    let a = admins.iter().find(|a| a.get::<serde_json::Value>("/v1/groups").is_ok()).expect("a reachable admin");
    let members = group(a);
    assert!(members.contains(&spare) && !members.contains(&failing), "the spare took the node's place: {members:?}");
    let shards: serde_json::Value = a.get("/v1/shards").expect("shards");
    for s in shards.as_array().expect("shards") {
        let replicas: Vec<u64> =
            s["shard"]["replicas"].as_array().expect("replicas").iter().filter_map(|r| r["node"].as_u64()).collect();
        assert!(!replicas.contains(&failing), "shard still on the failing node: {s}");
        assert!(replicas.contains(&spare), "shard not on the spare: {s}");
    }
    let ops: serde_json::Value = a.get("/v1/operators").expect("operators");
    let swaps: Vec<&serde_json::Value> = ops
        .as_array()
        .expect("operators")
        .iter()
        .filter(|o| o["steps"].as_array().is_some_and(|s| s.iter().any(|s| s["step"] == "swap-replica")))
        .collect();
    assert!(!swaps.is_empty(), "the cut-over went through joint-consensus swaps: {ops}");
    for op in &swaps {
        assert_eq!(op["status"]["status"], "done", "{op}");
        let verified = op["verifications"].as_array().is_some_and(|v| v.iter().any(|v| v["leader"] == v["replica"]));
        assert!(verified, "every swap was preceded by a matching checksum: {op}");
    }

    // The feedback loop (seed 004) recorded the evacuation on the evidence of risk, with the
    // node's ranges' service before it, and the node's warnings are in the report.
    let report: serde_json::Value = a.get("/v1/pfa/report?horizon_ms=600000").expect("pfa report");
    let evacuation = report["mitigations"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["kind"] == "evacuation" && m["node"] == failing).cloned());
    let evacuation = evacuation.unwrap_or_else(|| panic!("no evacuation record: {report}"));
    assert_eq!(evacuation["evidence"], "risk", "{evacuation}");
    assert!(evacuation["before"]["qps"].as_f64().is_some(), "{evacuation}");
    let warned = report["warnings"].as_array().is_some_and(|w| w.iter().any(|w| w["node"] == failing));
    assert!(warned, "the failing node's warnings: {report}");

    // The node dies: nothing it held is needed any more.
    pg.kill(failing);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let acked = load.finish().await;
    assert!(acked >= 500, "{acked} writes acknowledged");
    pg.stop(Duration::from_secs(10));
}
