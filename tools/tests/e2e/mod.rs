//! Multi-process end-to-end tests: a playground of real `presage` node processes, driven
//! through `presage-client`, a Redis client library, raw RESP and raw HTTP.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use presage_client::{Client, ClientError};
use presage_playground::{Playground, PlaygroundOptions, SecurityInfo};

mod bench;
mod capacity;
#[cfg(feature = "failpoints")]
mod crash;
mod dist;
mod load;
mod maintenance;
mod migrate;
mod monitoring;
mod pfa;
mod priority;
mod redis_apps;
mod redis_diff;
mod replica_reads;
mod trust;

fn options(dir: &std::path::Path, nodes: u64) -> PlaygroundOptions {
    PlaygroundOptions {
        nodes,
        regions: 3,
        data_dir: dir.to_path_buf(),
        overrides: vec![],
        binary: env!("CARGO_BIN_EXE_presage").into(),
        ready_timeout: Duration::from_secs(120),
        insecure: false,
    }
}

/// A Redis client connection to `addr`: TLS trusting the cluster CA and logged in as the
/// read-write user, or plain TCP to an insecure cluster.
async fn redis_conn(security: &SecurityInfo, addr: &str) -> redis::aio::MultiplexedConnection {
    redis_client(security, addr).get_multiplexed_async_connection().await.expect("redis connection")
}

fn redis_client(security: &SecurityInfo, addr: &str) -> redis::Client {
    let Some(ca) = &security.ca_cert else {
        return redis::Client::open(format!("redis://{addr}/")).expect("redis url");
    };
    let user = security.resp_user.as_deref().expect("user");
    let password = security.resp_password.as_deref().expect("password");
    let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(std::fs::read(ca).expect("CA")) };
    redis::Client::build_with_tls(format!("rediss://{user}:{password}@{addr}/"), certs).expect("redis TLS client")
}

/// Writes `key` until it is acknowledged (`true`), or gives up on an unknown outcome or
/// after the deadline (`false`: maybe written).
async fn put_acked(client: &Client, key: &[u8], value: &[u8]) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        match client.put(key, value).await {
            Ok(()) => return true,
            Err(ClientError::OutcomeUnknown(_)) => return false,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    false
}

async fn get_retrying(client: &Client, key: &[u8]) -> Option<Vec<u8>> {
    for _ in 0..100 {
        match client.get(key).await {
            Ok(v) => return v,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    panic!("could not read {:?}", String::from_utf8_lossy(key));
}

/// A raw exchange on a fresh TCP connection: sends `bytes`, reads until the peer closes or
/// `max_bytes` arrive (bounded by a timeout).
fn raw(addr: &str, bytes: &[u8]) -> (String, bool) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s.write_all(bytes).expect("send");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
        if out.len() > 64 << 10 {
            break false;
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playground_survives_kill_9_of_the_busiest_node_without_losing_acknowledged_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut pg = Playground::start(&options(dir.path(), 3)).await.expect("playground starts");
    let cluster = presage_playground::ClusterFile::read(dir.path()).expect("cluster.json");
    assert_eq!(cluster.nodes.len(), 3);
    let client = Client::connect(&cluster.native_addrs(), cluster.security.client_config()).await.expect("client");

    // Writes through both interfaces, read back through the other one.
    let mut acked: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut resp = redis_conn(&cluster.security, &cluster.nodes[1].resp).await;
    for i in 0..100u32 {
        let (k, v) = (format!("native-{i:04}"), format!("value-{i}"));
        client.put(k.as_bytes(), v.as_bytes()).await.expect("native put");
        acked.insert(k.into_bytes(), v.into_bytes());
        let (k, v) = (format!("resp-{i:04}"), format!("value-{i}"));
        let () = redis::cmd("SET").arg(&k).arg(&v).query_async(&mut resp).await.expect("RESP SET");
        acked.insert(k.into_bytes(), v.into_bytes());
    }
    let got: Option<String> = redis::cmd("GET").arg("native-0007").query_async(&mut resp).await.expect("RESP GET");
    assert_eq!(got.as_deref(), Some("value-7"));
    assert_eq!(client.get(b"resp-0042").await.expect("native get").as_deref(), Some(b"value-42".as_slice()));
    let mget: Vec<Option<String>> = redis::cmd("MGET")
        .arg("resp-0001")
        .arg("missing")
        .arg("native-0002")
        .query_async(&mut resp)
        .await
        .expect("MGET");
    assert_eq!(mget, vec![Some("value-1".into()), None, Some("value-2".into())]);
    redis_apps::run(&cluster.security, &cluster.nodes[1]).await;
    replica_reads::check(&pg, &cluster, &mut acked).await;
    scan_moves_between_nodes(&cluster).await;

    // Kill -9 the node holding the most leaders.
    client.refresh(b"").await.expect("routes");
    let mut leaders: BTreeMap<u64, usize> = BTreeMap::new();
    for s in client.cached_routes() {
        *leaders.entry(s.leader.unwrap_or(0)).or_default() += 1;
    }
    let victim = leaders.iter().filter(|(n, _)| **n != 0).max_by_key(|(_, c)| **c).map(|(n, _)| *n).expect("a leader");
    pg.kill(victim);

    // Keep writing through a surviving node's RESP and through the client.
    let survivor = cluster.nodes.iter().find(|n| n.id != victim).expect("a survivor");
    let mut resp = redis_conn(&cluster.security, &survivor.resp).await;
    let mut maybe = 0;
    for i in 0..50u32 {
        let (k, v) = (format!("after-kill-{i:04}"), format!("v{i}"));
        if put_acked(&client, k.as_bytes(), v.as_bytes()).await {
            acked.insert(k.into_bytes(), v.into_bytes());
        } else {
            maybe += 1;
        }
        let k = format!("after-kill-resp-{i:04}");
        let r: redis::RedisResult<()> = redis::cmd("SET").arg(&k).arg("r").query_async(&mut resp).await;
        if r.is_ok() {
            acked.insert(k.into_bytes(), b"r".to_vec());
        }
    }
    assert!(acked.len() >= 250, "writes kept being acknowledged after the kill ({maybe} unknown)");

    // Restart it; everything acknowledged is there, read through every node.
    pg.restart(victim, &[]).expect("restart");
    let ready = async {
        loop {
            if presage_playground::ready(&cluster, 3, 3).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(120), ready).await.expect("the cluster recovers after the restart");
    for (k, v) in &acked {
        assert_eq!(get_retrying(&client, k).await.as_ref(), Some(v), "{}", String::from_utf8_lossy(k));
    }
    let restarted = cluster.nodes.iter().find(|n| n.id == victim).expect("victim");
    let mut resp = redis_conn(&cluster.security, &restarted.resp).await;
    for (k, v) in acked.iter().step_by(7) {
        let got: Option<Vec<u8>> = redis::cmd("GET").arg(k.as_slice()).query_async(&mut resp).await.expect("GET");
        assert_eq!(got.as_ref(), Some(v));
    }
    pg.stop(Duration::from_secs(15));
}

/// On an insecure node (plain TCP and HTTP, so that raw bytes reach the parsers); the same
/// parsers sit behind TLS on a secure node (`trust.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_ctl_works_and_bad_input_gets_clear_errors_while_the_node_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Every command goes to the slow log (SLOWLOG is checked below). The lone node's failure
    // risk depends on how loaded the test machine is; an evacuation it started would answer
    // `decommission` first, so proactive migration is off (this test is about the CLI).
    let overrides =
        vec!["resp.slowlog-slower-than-us=0".to_string(), "server.shard-manager.proactive-migration=false".to_string()];
    let opts = PlaygroundOptions { insecure: true, overrides, ..options(dir.path(), 1) };
    let mut pg = Playground::start(&opts).await.expect("playground starts");
    let node = pg.cluster.nodes[0].clone();
    let security = pg.cluster.security.clone();

    // Malformed RESP: answered, then that connection closes.
    let (answer, closed) = raw(&node.resp, b"*2\r\n$3\r\nGET\r\n:oops\r\n");
    assert!(answer.starts_with("-ERR Protocol error"), "{answer}");
    assert!(closed);
    // An oversize bulk string is refused from its header, before its bytes are sent.
    let (answer, closed) = raw(&node.resp, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$999999999999\r\n");
    assert!(answer.contains("invalid bulk length"), "{answer}");
    assert!(closed);
    // Unknown commands and wrong arities are answered; the connection goes on.
    let (answer, _) = raw(&node.resp, b"FLY me\r\nGET\r\nPING\r\nQUIT\r\n");
    assert!(answer.starts_with("-ERR unknown command 'FLY', with args beginning with: 'me' \r\n"), "{answer}");
    assert!(answer.contains("-ERR wrong number of arguments for 'get' command\r\n+PONG\r\n+OK\r\n"), "{answer}");

    // Bad admin JSON: a 400 with the reason.
    let body = "{\"command\":\"split\"";
    let http = format!(
        "POST /v1/admin HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (answer, _) = raw(&node.admin, http.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("bad admin command JSON"), "{answer}");
    let body = "{\"command\":\"split\",\"shard\":424242}";
    let http = format!(
        "POST /v1/admin HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (answer, _) = raw(&node.admin, http.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("does not exist"), "{answer}");
    // Fault injection is on in the playground; a bad rule is refused.
    let body = "{\"read\":{\"error-rate\":2.0}}";
    let http = format!(
        "PUT /v1/faults HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (answer, _) = raw(&node.admin, http.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("error-rate"), "{answer}");

    // Still serving, nothing lost.
    let mut resp = redis_conn(&security, &node.resp).await;
    let () = redis::cmd("SET").arg("k").arg("v").query_async(&mut resp).await.expect("SET");
    let got: Option<String> = redis::cmd("GET").arg("k").query_async(&mut resp).await.expect("GET");
    assert_eq!(got.as_deref(), Some("v"));
    let () = redis::cmd("SET").arg("gone").arg("x").query_async(&mut resp).await.expect("SET");
    let removed: i64 = redis::cmd("DEL").arg("gone").arg("never").query_async(&mut resp).await.expect("DEL");
    assert_eq!(removed, 1);
    let got: Option<String> = redis::cmd("GET").arg("gone").query_async(&mut resp).await.expect("GET");
    assert_eq!(got, None);
    conditional_and_expiring_writes(&security, &node).await;
    let (answer, _) = raw(&node.admin, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(answer.contains("presage_requests_total{command=\"set\",protocol=\"resp\",result=\"ok\"}"), "{answer}");
    assert!(
        answer.contains("presage_requests_total{command=\"unknown\",protocol=\"resp\",result=\"error\"}"),
        "{answer}"
    );
    // One metric per quantity, typed; the process and the build; the manager's counts and
    // predictions on the node that runs it (the only one here).
    for line in [
        "# TYPE presage_replicas gauge",
        "# TYPE presage_leaders gauge",
        "# TYPE presage_raft_frames_sent_total counter",
        "# TYPE presage_snapshot_sent_bytes_total counter",
        "# TYPE process_cpu_seconds_total counter",
        "# TYPE process_resident_memory_bytes gauge",
        "presage_is_shard_manager 1",
        "presage_manager_nodes_up 1",
        "presage_warnings_active{kind=\"DiskDegradation\"} 0",
    ] {
        assert!(answer.contains(line), "no {line:?} in {answer}");
    }
    assert!(answer.contains("presage_build_info{version=\""), "{answer}");
    let (answer, _) = raw(&node.admin, b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("\"caught_up\":true"), "{answer}");
    monitoring::check(&node.admin);
    redis_diff::check(&node.resp).await;
    clients_and_slowlog(&security, &node).await;

    // presage-ctl: tables, JSON, a manual split that happens, a clear error when unreachable.
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_presage-ctl"))
            .arg("--admin")
            .arg(&node.admin)
            .args(args)
            .output()
            .expect("run presage-ctl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The log filter, read and replaced at run time; a bad one refused, the old one kept.
    let (ok, out, err) = ctl(&["log-level"]);
    assert!(ok && out.trim() == "info", "{out}{err}");
    let (ok, out, err) = ctl(&["log-level", "info,presage_replication=debug"]);
    // Answered as in force (the logger's own order of directives).
    assert!(ok && out.trim() == "presage_replication=debug,info", "{out}{err}");
    let (ok, out, err) = ctl(&["log-level", "info,presage=notalevel"]);
    assert!(!ok && err.contains("bad log filter"), "{out}{err}");
    let (ok, out, err) = ctl(&["--json", "log-level", "info"]);
    assert!(ok && out.contains("\"filter\": \"info\""), "{out}{err}");
    let (ok, out, err) = ctl(&["nodes"]);
    assert!(ok && out.starts_with("NODE") && out.contains(&node.resp) && out.contains("INSECURE"), "{out}{err}");
    // From the node's heartbeats: its disk use, replicas, leaders and when it was heard from.
    let (ok, out, err) = ctl(&["--json", "nodes"]);
    let nodes: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    let status = &nodes[0]["status"];
    assert!(ok && status["replicas"].as_u64() >= Some(2) && status["leaders"].as_u64() >= Some(2), "{out}");
    assert!(
        status["used_bytes"].as_u64().is_some() && status["last_heartbeat_ms_ago"].as_u64() < Some(10_000),
        "{out}"
    );
    let (ok, out, _) = ctl(&["shards", "--key", "k"]);
    assert!(ok && out.contains("[-inf, 0xff)"), "{out}");
    // Keys are taken as text, with \xNN escapes, or in hex: the same key three ways.
    for typed in ["0x6b", "\\x6b"] {
        let (ok, same, err) = ctl(&["shards", "--key", typed]);
        assert!(ok && same == out, "{typed}: {same}{err}");
    }
    let (ok, out, err) = ctl(&["--json", "shards", "--top", "1", "--by", "writes"]);
    let top: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    assert!(ok && top.as_array().is_some_and(|a| a.len() == 1) && top[0]["load"]["write_qps"].is_number(), "{out}");
    let (ok, _, err) = ctl(&["shards", "--key", "0x6"]);
    assert!(!ok && err.contains("bad key `0x6`: an odd number of hex digits"), "{err}");
    let (ok, out, err) = ctl(&["split", "1", "m"]);
    assert!(ok && out.contains("splitting shard 1"), "{out}{err}");
    let mut split = false;
    for _ in 0..100 {
        let (_, out, _) = ctl(&["--json", "shards"]);
        let rows: serde_json::Value = serde_json::from_str(&out).expect("shards JSON");
        if rows.as_array().is_some_and(|r| r.len() == 3) {
            split = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(split, "the manual split happened");
    let mut out = String::new();
    for _ in 0..100 {
        out = ctl(&["operators"]).1;
        if out.contains("Manual") && out.contains("Done") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(out.contains("Manual") && out.contains("Done"), "{out}");
    let (ok, _, err) = ctl(&["split", "99"]);
    assert!(!ok && err.contains("shard 99 does not exist"), "{err}");
    // One node: nothing can take its place, and an Up node has no drain to undo.
    let (ok, _, err) = ctl(&["decommission", "1"]);
    assert!(!ok && err.contains("no eligible node to take node 1's place"), "{err}");
    let (ok, _, err) = ctl(&["recommission", "1"]);
    assert!(!ok && err.contains("not Draining"), "{err}");
    let (ok, _, err) = ctl(&["cancel-operator", "424242"]);
    assert!(!ok && err.contains("no operator 424242"), "{err}");
    let finished = out.lines().find(|l| l.contains("Done")).and_then(|l| l.split_whitespace().next()).expect("an id");
    let (ok, _, err) = ctl(&["cancel-operator", finished]);
    assert!(!ok && err.contains("is not running"), "{err}");
    // Load-driven scheduling paused during an incident, then resumed.
    let (ok, out, err) = ctl(&["scheduler", "pause"]);
    assert!(ok && out.contains("load-driven scheduling is paused"), "{out}{err}");
    let (ok, out, err) = ctl(&["--json", "scheduler", "status"]);
    assert!(ok && out.contains("\"paused\": true"), "{out}{err}");
    let (ok, out, err) = ctl(&["scheduler", "resume"]);
    assert!(ok && out.contains("running"), "{out}{err}");
    let (ok, out, err) = ctl(&["scheduler", "status"]);
    assert!(ok && out.trim() == "load-driven scheduling is running", "{out}{err}");
    // Faults through presage-ctl: a short stall of synced writes, shown, then over; a bad
    // configuration refused with its reason; cleared.
    let (ok, out, err) = ctl(&["faults", "set", r#"{"sync": {"stall-ms": 300}, "seed": 4}"#]);
    assert!(ok && out.contains("faults set"), "{out}{err}");
    let (ok, out, _) = ctl(&["faults", "show"]);
    let shown: serde_json::Value = serde_json::from_str(&out).expect("faults JSON");
    assert!(ok && shown["sync"]["stall-ms"] == 300 && shown["disk-full"] == false, "{out}");
    let mut resp = redis_conn(&security, &node.resp).await;
    let () = redis::cmd("SET").arg("after-stall").arg("v").query_async(&mut resp).await.expect("SET through the stall");
    let (ok, _, err) = ctl(&["faults", "set", r#"{"write": {"slow-rate": 7}}"#]);
    assert!(!ok && err.contains("slow-rate 7 is outside [0, 1]"), "{err}");
    let (ok, out, err) = ctl(&["--json", "faults", "set", r#"{"seed": 5}"#]);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    assert!(ok && shown["seed"] == 5, "{out}");
    let (ok, _, err) = ctl(&["faults", "set", "{not json"]);
    assert!(!ok && err.contains("not JSON"), "{err}");
    let (ok, out, err) = ctl(&["faults", "clear"]);
    assert!(ok && out.contains("faults cleared"), "{out}{err}");
    let (_, out, _) = ctl(&["faults", "show"]);
    assert!(out.contains("\"stall-ms\":0") || out.contains("\"stall-ms\": 0"), "{out}");
    // Network faults on the node's Raft links: set, shown, a bad one refused, cleared.
    let (ok, out, err) = ctl(&["faults", "--network", "set", r#"{"delay-ms": 20, "loss-rate": 0.1}"#]);
    assert!(ok && out.contains("faults set"), "{out}{err}");
    let (ok, out, _) = ctl(&["faults", "--network", "show"]);
    let shown: serde_json::Value = serde_json::from_str(&out).expect("network faults JSON");
    assert!(ok && shown["delay-ms"] == 20 && shown["loss-rate"] == 0.1, "{out}");
    let (ok, _, err) = ctl(&["faults", "--network", "set", r#"{"loss-rate": 2}"#]);
    assert!(!ok && err.contains("loss-rate 2 is not within [0, 1]"), "{err}");
    let (ok, out, err) = ctl(&["faults", "--network", "clear"]);
    assert!(ok && out.contains("faults cleared"), "{out}{err}");
    let (_, out, _) = ctl(&["faults", "--network", "show"]);
    assert!(out.contains("\"delay-ms\":0") || out.contains("\"delay-ms\": 0"), "{out}");
    // Host faults: a short CPU and memory fault, shown while it lasts, then cleared.
    let host = r#"{"cpu-threads": 1, "memory-bytes": 4194304, "duration-ms": 60000}"#;
    let (ok, out, err) = ctl(&["faults", "--host", "set", host]);
    assert!(ok && out.contains("faults set"), "{out}{err}");
    let (ok, out, _) = ctl(&["faults", "--host", "show"]);
    let shown: serde_json::Value = serde_json::from_str(&out).expect("host faults JSON");
    assert!(ok && shown["cpu-threads"] == 1 && shown["memory-bytes"] == 4194304, "{out}");
    let (ok, _, err) = ctl(&["faults", "--host", "set", r#"{"cpu-threads": 1}"#]);
    assert!(!ok && err.contains("duration-ms must be within"), "{err}");
    let (ok, out, err) = ctl(&["faults", "--host", "clear"]);
    assert!(ok && out.contains("faults cleared"), "{out}{err}");
    let (_, out, _) = ctl(&["faults", "--host", "show"]);
    assert!(out.contains("\"cpu-threads\":0") || out.contains("\"cpu-threads\": 0"), "{out}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_presage-ctl"))
        .args(["--admin", "127.0.0.1:1", "nodes"])
        .output()
        .expect("run presage-ctl");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the admin API at 127.0.0.1:1"));

    // A bad config is refused with the key's name, and the node does not start.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "node-id = 2\n[server]\nrequest-timeout-ms = \"soon\"\n").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_presage"))
        .args(["start", "--config"])
        .arg(&bad)
        .output()
        .expect("run presage start");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("server.request-timeout-ms") && stderr.contains("not a duration"), "{stderr}");
    pg.stop(Duration::from_secs(15));
}

/// SET NX/XX/GET/EX/PX, SETNX and INCR over RESP, and the native client's conditional and
/// expiring writes, against a running node.
async fn conditional_and_expiring_writes(security: &SecurityInfo, node: &presage_playground::PlaygroundNode) {
    let mut conn = redis_conn(security, &node.resp).await;
    let r = &mut conn;
    use redis::Value::{BulkString, Int, Nil, Okay};
    let bulk = |s: &str| BulkString(s.as_bytes().to_vec());
    assert_eq!(run(r, &["SET", "c1", "a", "NX"]).await.expect("SET NX"), Okay);
    assert_eq!(run(r, &["SET", "c1", "b", "NX"]).await.expect("SET NX"), Nil, "NX on a present key writes nothing");
    assert_eq!(run(r, &["SET", "c2", "x", "XX"]).await.expect("SET XX"), Nil, "XX on an absent key writes nothing");
    assert_eq!(run(r, &["GET", "c2"]).await.expect("GET"), Nil);
    assert_eq!(run(r, &["SET", "c1", "b", "XX"]).await.expect("SET XX"), Okay);
    assert_eq!(run(r, &["SET", "c1", "z", "GET"]).await.expect("SET GET"), bulk("b"));
    assert_eq!(run(r, &["SET", "c1", "w", "NX", "GET"]).await.expect("SET NX GET"), bulk("z"));
    assert_eq!(run(r, &["GET", "c1"]).await.expect("GET"), bulk("z"));
    assert_eq!(run(r, &["SETNX", "c3", "1"]).await.expect("SETNX"), Int(1));
    assert_eq!(run(r, &["SETNX", "c3", "2"]).await.expect("SETNX"), Int(0));
    assert_eq!(run(r, &["INCRBY", "c3", "41"]).await.expect("INCRBY"), Int(42));
    assert_eq!(run(r, &["DECRBY", "c3", "2"]).await.expect("DECRBY"), Int(40));
    assert_eq!(run(r, &["DECR", "c3"]).await.expect("DECR"), Int(39));
    let e = run(r, &["INCR", "c1"]).await.expect_err("INCR of a non-integer");
    assert!(e.to_string().contains("not an integer"), "{e}");
    let e = run(r, &["SET", "c4", "v", "EX", "0"]).await.expect_err("EX 0");
    assert!(e.to_string().contains("invalid expire time"), "{e}");
    let e = run(r, &["SET", "c4", "v", "NX", "XX"]).await.expect_err("NX XX");
    assert!(e.to_string().contains("syntax error"), "{e}");
    // Expiry: a key set for 50 ms is gone later; one set for an hour stays.
    assert_eq!(run(r, &["SET", "t1", "v", "PX", "50"]).await.expect("SET PX"), Okay);
    assert_eq!(run(r, &["SET", "t2", "v", "EX", "3600"]).await.expect("SET EX"), Okay);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(run(r, &["GET", "t1"]).await.expect("GET"), Nil, "expired");
    assert_eq!(run(r, &["EXISTS", "t1", "t2"]).await.expect("EXISTS"), Int(1));
    assert_eq!(run(r, &["SET", "t1", "again", "NX"]).await.expect("SET NX"), Okay, "an expired key is absent");

    // A pipeline: its commands run concurrently, the replies come in command order, and
    // commands on one key keep their order (each GET reads the SET just before it).
    let mut p = redis::pipe();
    for i in 0..50 {
        p.cmd("SET").arg("pk").arg(i).cmd("GET").arg("pk");
        p.cmd("SET").arg(format!("pk-{i}")).arg(i).cmd("INCR").arg("pctr").cmd("PING");
    }
    let replies: Vec<redis::Value> = p.query_async(r).await.expect("pipeline");
    assert_eq!(replies.len(), 250);
    for (i, five) in replies.chunks(5).enumerate() {
        let want = [Okay, bulk(&i.to_string()), Okay, Int(i as i64 + 1), redis::Value::SimpleString("PONG".into())];
        assert_eq!(five, want, "pipeline step {i}");
    }

    // Runs: plain SETs, and plain GETs, read together go as one request per shard with one
    // reply each, in order; a GET of a key set just before (another kind) still reads it.
    let mut p = redis::pipe();
    for i in 0..100 {
        p.cmd("SET").arg(format!("run-{i}")).arg(i);
    }
    p.cmd("GET").arg("run-7").cmd("SET").arg("run-7").arg("x").cmd("GET").arg("run-7");
    for i in 0..100 {
        p.cmd("GET").arg(format!("run-{i}"));
    }
    p.cmd("GET").arg("run-absent");
    let replies: Vec<redis::Value> = p.query_async(r).await.expect("runs");
    assert_eq!(replies.len(), 204);
    assert!(replies[..100].iter().all(|v| *v == Okay), "{:?}", &replies[..100]);
    assert_eq!(replies[100..103], [bulk("7"), Okay, bulk("x")]);
    for (i, v) in replies[103..203].iter().enumerate() {
        assert_eq!(*v, if i == 7 { bulk("x") } else { bulk(&i.to_string()) }, "GET run-{i}");
    }
    assert_eq!(replies[203], Nil);
    let info: String = redis::cmd("INFO").query_async(r).await.expect("INFO");
    let counter = |name: &str| -> u64 {
        let line = info.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_else(|| panic!("{name} in {info}"));
        line.trim().parse().expect("a count")
    };
    assert!(counter("pipeline_runs:") >= 2, "the SETs and the GETs went as runs: {info}");
    assert!(counter("pipeline_run_commands:") > counter("pipeline_runs:"), "{info}");

    // INCR from four connections at once: every increment counts exactly once.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (addr, security) = (node.resp.clone(), security.clone());
        tasks.spawn(async move {
            let mut c = redis_conn(&security, &addr).await;
            for _ in 0..25 {
                let _: i64 = redis::cmd("INCR").arg("ctr").query_async(&mut c).await.expect("INCR");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let ctr: i64 = redis::cmd("GET").arg("ctr").query_async(r).await.expect("GET ctr");
    assert_eq!(ctr, 100);

    // The native client: compare-and-set and a time to live.
    let client = Client::connect(&[node.native.as_str()], security.client_config()).await.expect("client");
    use presage_client::Expect;
    assert_eq!(client.put_if(b"n1", b"1", Expect::Absent).await.expect("put_if"), Ok(()));
    assert_eq!(client.put_if(b"n1", b"2", Expect::Absent).await.expect("put_if"), Err(Some(b"1".to_vec())));
    let cas = client.put_if(b"n1", b"2", Expect::Equals { value: b"1".to_vec() }).await.expect("put_if");
    assert_eq!(cas, Ok(()));
    client.put_with_ttl(b"n2", b"v", Duration::from_millis(20)).await.expect("put_with_ttl");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(client.get(b"n2").await.expect("get"), None);
    let scanned = client.scan(b"n", Some(b"o"), 10).await.expect("scan");
    assert_eq!(scanned, vec![(b"n1".to_vec(), b"2".to_vec())], "a scan skips expired values");
}

/// A SCAN started on one node goes on through the others, page by page, and finds every key.
async fn scan_moves_between_nodes(cluster: &presage_playground::ClusterFile) {
    let mut conns = Vec::new();
    for n in &cluster.nodes {
        conns.push(redis_conn(&cluster.security, &n.resp).await);
    }
    for i in 0..30 {
        let () = redis::cmd("SET").arg(format!("scan-x-{i:02}")).arg(i).query_async(&mut conns[0]).await.expect("SET");
    }
    let (mut cursor, mut pages, mut found) = (0u64, 0usize, std::collections::BTreeSet::new());
    loop {
        let conn = &mut conns[pages % 3];
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("scan-x-*")
            .arg("COUNT")
            .arg(40)
            .query_async(conn)
            .await
            .unwrap_or_else(|e| panic!("SCAN page {pages} on node {}: {e}", pages % 3 + 1));
        found.extend(keys);
        pages += 1;
        if next == 0 {
            break;
        }
        cursor = next;
        assert!(pages < 100, "the scan ends");
    }
    assert!(pages >= 3, "the scan used every node ({pages} pages)");
    assert_eq!(found.len(), 30, "every key once the scan is over: {found:?}");
    let e = redis::cmd("SCAN").arg(12345).query_async::<redis::Value>(&mut conns[1]).await.expect_err("unknown cursor");
    assert!(e.to_string().contains("invalid cursor"), "{e}");
}

/// CLIENT LIST, CLIENT KILL and SLOWLOG on an insecure node (where everyone may).
async fn clients_and_slowlog(security: &SecurityInfo, node: &presage_playground::PlaygroundNode) {
    let mut me = redis_conn(security, &node.resp).await;
    let mut other = redis_conn(security, &node.resp).await;
    let () = redis::cmd("CLIENT").arg("SETNAME").arg("victim").query_async(&mut other).await.expect("SETNAME");
    let list: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut me).await.expect("CLIENT LIST");
    let line = list.lines().find(|l| l.contains("name=victim")).unwrap_or_else(|| panic!("{list}"));
    assert!(line.contains("cmd=client"), "{line}");
    let id = line.split(' ').find_map(|f| f.strip_prefix("id=")).expect("an id");
    let killed: i64 = redis::cmd("CLIENT").arg("KILL").arg("ID").arg(id).query_async(&mut me).await.expect("KILL");
    assert_eq!(killed, 1);
    let after = redis::cmd("PING").query_async::<String>(&mut other).await;
    assert!(after.is_err(), "a killed connection is closed: {after:?}");
    let list: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut me).await.expect("CLIENT LIST");
    assert!(!list.contains("name=victim"), "{list}");
    // The node logs every command here (slower than 0 µs): the newest first, with its args.
    let () = redis::cmd("SET").arg("slow-k").arg("v").query_async(&mut me).await.expect("SET");
    let entries: Vec<redis::Value> =
        redis::cmd("SLOWLOG").arg("GET").arg(1).query_async(&mut me).await.expect("SLOWLOG GET");
    let text = format!("{entries:?}");
    assert!(entries.len() == 1 && text.contains("slow-k"), "{text}");
    let len: i64 = redis::cmd("SLOWLOG").arg("LEN").query_async(&mut me).await.expect("SLOWLOG LEN");
    assert!(len > 1, "{len}");
}

async fn run(r: &mut redis::aio::MultiplexedConnection, parts: &[&str]) -> redis::RedisResult<redis::Value> {
    let mut c = redis::cmd(parts[0]);
    for p in &parts[1..] {
        c.arg(*p);
    }
    c.query_async(r).await
}
