//! A maintenance window on a real cluster (seeds 001/002): declared with `presage-ctl events`
//! while a client writes and reads, the node (the one running the shard manager, the hardest
//! case) leads nothing and every shard keeps its three voters before the window opens; the
//! node is then stopped for the window and restarted after it. No request fails, no
//! acknowledged write is lost, and declaring needs the admin credential. A known spike's range
//! becomes a shard of its own before the spike; `presage-ctl forecast` reports the load.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use presage_client::Client;
use presage_playground::Playground;

use super::load::Load;
use super::options;
use super::pfa::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maintenance_window_drains_the_node_first_and_no_request_fails_while_it_is_stopped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = options(dir.path(), 3);
    opts.overrides.extend([
        "server.shard-manager.heartbeat-interval-ms=\"200ms\"".to_string(),
        // Down within the window: the manager must excuse it, not replace it.
        "server.shard-manager.node-suspect-after-ms=\"2s\"".to_string(),
        "server.shard-manager.node-down-after-ms=\"5s\"".to_string(),
    ]);
    let mut pg = Playground::start(&opts).await.expect("playground starts");
    let nodes = pg.cluster.nodes.clone();
    let security = pg.cluster.security.clone();
    let other = nodes[1].clone();
    let ctl = |args: &[&str], token: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_presage-ctl"));
        cmd.args(["--admin", &other.admin]);
        if let Some(ca) = &security.ca_cert {
            cmd.arg("--ca-cert").arg(ca);
        }
        if let (true, Some(t)) = (token, &security.admin_token) {
            cmd.args(["--token", t]);
        }
        let out = cmd.args(args).output().expect("run presage-ctl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success(), text, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let admin = pg.admin(other.id).expect("admin").client();
    let manager = |admin: &presage_ctl::AdminClient| admin.cluster().ok().map(|c| c.manager);
    let node = eventually(60, "a shard manager runs", || manager(&admin)).await;

    let client = Arc::new(Client::connect(&pg.cluster.native_addrs(), pg.client_config()).await.expect("client"));
    let load = Load::start(Arc::clone(&client), "m", 500, true);

    // Declaring takes the admin credential.
    let add = ["events", "add", "maintenance", "--node", &node.to_string(), "--start", "+15s", "--duration", "20s"];
    let add: Vec<&str> = add.into_iter().chain(["--lead", "12s", "--note", "kernel upgrade"]).collect();
    if security.admin_token.is_some() {
        let (ok, out, err) = ctl(&add, false);
        assert!(!ok && !err.is_empty(), "declared without a token: {out}{err}");
    }
    let (ok, out, err) = ctl(&add, true);
    assert!(ok && out.contains("declared"), "{out}{err}");
    let (ok, out, err) = ctl(&["events", "list"], true);
    assert!(ok && out.contains("kernel upgrade") && out.contains(&format!("maintenance node {node}")), "{out}{err}");

    // Predicted load under the client's load: every node and region scored, the shard the
    // client writes to carries load now.
    let report = eventually(30, "the forecast sees the client's load", || {
        let (ok, out, _) = ctl(&["--json", "forecast", "--top", "5"], true);
        let v: serde_json::Value = serde_json::from_str(&out).ok().filter(|_| ok)?;
        let busy = v["shards"].as_array()?.iter().any(|s| s["forecast"]["now"].as_f64().is_some_and(|n| n > 1.0));
        busy.then_some(v)
    })
    .await;
    assert_eq!(report["nodes"].as_array().map(Vec::len), Some(3), "{report}");
    assert_eq!(report["regions"].as_array().map(Vec::len), Some(3), "{report}");
    assert!(report["acting"] == true && report["horizon_ms"] == 900_000, "{report}");
    let (ok, out, err) = ctl(&["forecast"], true);
    assert!(ok && out.contains("PEAK/S") && out.contains("SCORE"), "{out}{err}");

    // A known spike: its range becomes a shard of its own before it begins.
    let spike = ["events", "add", "spike", "--start-key", "s", "--end-key", "t", "--shards", "1"];
    let spike: Vec<&str> = spike.into_iter().chain(["--start", "+8s", "--duration", "2m", "--lead", "6s"]).collect();
    let (ok, out, err) = ctl(&spike, true);
    assert!(ok, "{out}{err}");
    let rows = eventually(60, "the spike's range is a shard of its own", || {
        let rows = admin.shards(None, None, Some(b"s")).ok()?;
        rows.iter().any(|r| r.shard.start == b"s" && r.shard.end.as_deref() == Some(b"t".as_slice())).then_some(rows)
    })
    .await;
    eprintln!("spike range: {:?}", rows.iter().map(|r| r.shard.id).collect::<Vec<_>>());

    // Before the window opens: the node leads nothing, every shard keeps three voters.
    let phase = |ctl_out: &str| -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(ctl_out).ok()?;
        let window = v.as_array()?.iter().find(|e| e["what"]["kind"] == "maintenance")?;
        window["phase"].as_str().map(str::to_string)
    };
    let leads = |admin: &presage_ctl::AdminClient| -> Option<(usize, usize, usize)> {
        let shards: serde_json::Value = admin.get("/v1/shards").ok()?;
        let shards = shards.as_array()?;
        let led_by_node = shards.iter().filter(|s| s["shard"]["leader"] == node).count();
        let three_voters = shards
            .iter()
            .filter(|s| {
                s["shard"]["replicas"]
                    .as_array()
                    .is_some_and(|r| r.iter().filter(|x| x["role"] == "voter").count() == 3)
            })
            .count();
        Some((shards.len(), led_by_node, three_voters))
    };
    let mut drained_before_open = None;
    let open = eventually(60, "the window opens", || {
        let (_, out, _) = ctl(&["--json", "events", "list"], true);
        let p = phase(&out)?;
        if p == "preparing" {
            if let Some((n, 0, voters)) = leads(&admin) {
                drained_before_open = Some((n, voters));
            }
        }
        (p == "open").then_some(p)
    })
    .await;
    let (shards, voters) = drained_before_open.expect("the node was seen leading nothing while preparing");
    assert!(shards >= 2 && voters == shards, "every shard kept three voters: {voters} of {shards}");
    let (_, led_now, _) = leads(&admin).expect("shards");
    assert_eq!(led_now, 0, "node {node} leads nothing when the window is {open}");
    assert_ne!(manager(&admin), Some(node), "the shard manager moved off the node");

    // The node is stopped for the window, and started again after it.
    pg.kill(node);
    eventually(60, "the window closes", || {
        let (_, out, _) = ctl(&["--json", "events", "list"], true);
        (phase(&out)? == "closed").then_some(())
    })
    .await;
    let info = admin.cluster().expect("cluster");
    let state = info.nodes.iter().find(|n| n.id == node).map(|n| n.state);
    assert_eq!(state, Some(presage_shardmgr::NodeState::Down), "the stopped node is down");
    assert!(info.migrations.iter().all(|m| m.migration.node != node), "no repair of a node down for maintenance");
    assert!(info.groups.iter().all(|g| g.failures.is_empty()), "no failure recorded: {:?}", info.groups);
    pg.restart(node, &[]).expect("restart");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let acked = load.finish().await;
    assert!(acked >= 200, "{acked} keys acknowledged");
    pg.stop(Duration::from_secs(10));
}
