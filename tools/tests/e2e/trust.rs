//! Trust on real node processes (design.md §10): a secure playground serves its users over
//! TLS on every port and refuses everyone else. For every port and every kind of caller that
//! should not get in (plain TCP, a certificate of another cluster's CA, a client certificate
//! on the peer port, a node certificate claiming another node, a node of another cluster, an
//! application asking the control plane), each dangerous request is refused with a clear
//! error; afterwards the shards, their replicas and the data are unchanged and every node
//! still runs.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use presage_client::net::{Learns, Login, TcpRpc};
use presage_client::tls::{load_certs, load_key, provider, root_store, ClientTls};
use presage_client::{Client, ClientError, NetConfig, ProtoError, Request, Response};
use presage_playground::{ClusterFile, Playground};
use presage_security::cert;
use presage_security::handshake::{self, Channel, Hello};
use presage_shardmgr::{AdminCommand, Epoch, NodeHeartbeat, NodeMeta, NodeState, ShardMeta, ShardReport};

use super::{options, redis_client};

/// The cluster's id as node 1's data dir records it.
fn cluster_id(dir: &Path) -> u64 {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("node-1/data/node.json")).expect("node.json")).expect("json");
    json["cluster_id"].as_u64().expect("a cluster id is recorded")
}

/// A TLS client configuration trusting `ca`, presenting `identity` (a certificate and key).
fn tls_config(ca: &Path, identity: Option<(PathBuf, PathBuf)>) -> Arc<rustls::ClientConfig> {
    let roots = root_store(&load_certs(ca).expect("CA")).expect("roots");
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    Arc::new(match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(&cert).expect("cert"), load_key(&key).expect("key"))
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    })
}

/// TLS to `addr` trusting `ca`, presenting `identity`.
async fn tls_connect(
    addr: &str,
    ca: &Path,
    identity: Option<(PathBuf, PathBuf)>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    tokio_rustls::TlsConnector::from(tls_config(ca, identity)).connect(name, tcp).await
}

/// What the peer port answers `hello` from a caller presenting `identity`: the admitted
/// answer, or the refusal (or failure) as text.
async fn peer_hello(addr: &str, ca: &Path, identity: Option<(PathBuf, PathBuf)>, hello: Hello) -> Result<(), String> {
    let mut stream = tls_connect(addr, ca, identity).await.map_err(|e| format!("TLS: {e}"))?;
    handshake::dial(&mut stream, &hello, Duration::from_secs(5)).await.map(|_| ()).map_err(|e| e.to_string())
}

/// Plain bytes to a TLS port: the port answers nothing a client could take for an answer
/// (at most a TLS alert) and closes.
fn plain_bytes_refused(addr: &str, bytes: &[u8]) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(out.is_empty() || out[0] == 0x15, "{addr} answered plain bytes with {:?}", String::from_utf8_lossy(&out));
}

/// A native-protocol transport over TLS trusting the cluster CA, logging in as `login`.
fn native(cluster: &ClusterFile, login: Option<Login>, client_cert: bool) -> TcpRpc {
    let security = &cluster.security;
    let (client_cert, client_key) =
        if client_cert { (security.client_cert.clone(), security.client_key.clone()) } else { (None, None) };
    let tls = ClientTls { ca_cert: security.ca_cert.clone().expect("CA"), client_cert, client_key, server_name: None };
    let connect = Arc::new(tls.connector(Duration::from_secs(5)).expect("connector"));
    TcpRpc::with_connector(NetConfig::default(), connect, login, Learns::Client)
}

fn login(user: &str, password: &str) -> Option<Login> {
    Some(Login { user: user.into(), password: password.into() })
}

/// Control-plane requests that only nodes (and operators, through the admin API) may make.
fn dangerous(cluster: &ClusterFile, shards: &[ShardMeta]) -> Vec<Request> {
    let victim = shards.iter().find(|s| s.id != 0).expect("a data shard").clone();
    // A report claiming a newer configuration of the shard without any replica.
    let forged = ShardMeta {
        epoch: Epoch { version: victim.epoch.version, conf_ver: victim.epoch.conf_ver + 100 },
        replicas: vec![],
        leader: None,
        ..victim.clone()
    };
    let report = ShardReport { shard: forged, load: Default::default(), size_bytes: 0, keys: 0 };
    let heartbeat = NodeHeartbeat {
        node: 2,
        stats: Default::default(),
        shards: vec![report],
        replicas: vec![],
        replica_loads: vec![],
        telemetry: None,
        telemetry_backlog: None,
    };
    let node2 = &cluster.nodes[1];
    let hijack = NodeMeta {
        id: 2,
        raft_addr: "127.0.0.1:9".into(),
        client_addr: "127.0.0.1:9".into(),
        resp_addr: node2.resp.clone(),
        admin_addr: node2.admin.clone(),
        region: node2.region.clone(),
        capacity_bytes: 1,
        capacity_qps: 0,
        state: NodeState::Up,
        group: None,
        insecure: false,
    };
    vec![
        Request::Admin { command: AdminCommand::Split { shard: victim.id, key: None } },
        Request::Heartbeat { heartbeat, nodes_digest: 0 },
        Request::Join { node: hijack },
        Request::Execute {
            command: presage_shardmgr::Command {
                operator: 1,
                shard: victim.id,
                epoch: victim.epoch,
                leader: 1,
                step: presage_shardmgr::Step::TransferLeader { to: 3 },
            },
        },
        Request::ClusterInfo,
    ]
}

/// Shards as the admin API lists them, without soft state.
fn shard_state(pg: &Playground) -> Vec<ShardMeta> {
    let rows = pg.admin(1).expect("admin").client().shards(None, None, None).expect("shards");
    rows.into_iter().map(|r| ShardMeta { leader: None, ..r.shard }).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secure_playground_serves_its_users_and_refuses_everyone_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut pg = Playground::start(&options(dir.path(), 3)).await.expect("playground starts");
    let cluster = ClusterFile::read(dir.path()).expect("cluster.json");
    let security = cluster.security.clone();
    assert!(!security.insecure);
    let ca = security.ca_cert.clone().expect("a CA in cluster.json");
    let (user, password) = (security.resp_user.clone().expect("user"), security.resp_password.clone().expect("pass"));
    let (reader, reader_password) =
        (security.read_only_user.clone().expect("reader"), security.read_only_password.clone().expect("pass"));

    // The Rust client over TLS, logged in; data written before the attacks.
    let client = Client::connect(&cluster.native_addrs(), security.client_config()).await.expect("client");
    for i in 0..50u32 {
        client.put(format!("before-{i:03}").as_bytes(), b"kept").await.expect("put");
    }
    let before = shard_state(&pg);

    // --- native port ---
    let node1 = &cluster.nodes[0];
    plain_bytes_refused(&node1.native, b"\0\0\0\x10\0\0\0\0plain-text-frame");
    let anonymous = native(&cluster, None, false);
    for r in dangerous(&cluster, &before) {
        let answer = anonymous.call_addr(&node1.native, 1, r.clone()).await.expect("answered");
        assert!(matches!(answer, Response::Error(ProtoError::Unauthenticated(_))), "{r:?} -> {answer:?}");
    }
    let app = native(&cluster, login(&user, &password), false);
    for r in dangerous(&cluster, &before) {
        let answer = app.call_addr(&node1.native, 1, r.clone()).await.expect("answered");
        assert!(matches!(answer, Response::Error(ProtoError::PermissionDenied(_))), "{r:?} -> {answer:?}");
    }
    let wrong = native(&cluster, login(&user, "not-the-password"), false);
    let answer = wrong.call_addr(&node1.native, 1, Request::Hello).await.expect("answered");
    assert!(
        matches!(answer, Response::Error(ProtoError::Unauthenticated(ref m)) if m.contains("invalid username-password")),
        "{answer:?}"
    );
    // A read-only user reads and may not write.
    let cfg = presage_client::ClientConfig { login: login(&reader, &reader_password), ..security.client_config() };
    let reading = Client::connect(&cluster.native_addrs(), cfg).await.expect("reader");
    assert_eq!(reading.get(b"before-001").await.expect("read").as_deref(), Some(b"kept".as_slice()));
    match reading.put(b"x", b"y").await {
        Err(ClientError::Refused(ProtoError::PermissionDenied(m))) => assert!(m.contains("read-only"), "{m}"),
        other => panic!("a read-only user wrote: {other:?}"),
    }
    // A client certificate naming a listed user logs in without a password.
    let by_cert = native(&cluster, None, true);
    let answer = by_cert.call_addr(&node1.native, 1, Request::Hello).await.expect("answered");
    assert!(matches!(answer, Response::Hello { .. }), "{answer:?}");

    // --- peer port ---
    let peer = &node1.raft;
    let cluster = cluster.clone();
    let id = cluster_id(dir.path());
    // Plain TCP: a handshake and a Raft frame in the clear.
    let hello = |channel, node_id, cluster_id| Hello { channel, node_id, cluster_id };
    let mut clear = handshake::encode_hello(&hello(Channel::Raft, 2, id)).to_vec();
    clear.extend_from_slice(b"\0\0\0\x04\0\0\0\0oops");
    plain_bytes_refused(peer, &clear);
    // Another cluster's node certificate (another CA) for node 2.
    let other = dir.path().join("other-cluster");
    cert::create_ca(&other, &other.join("ca.key"), false).expect("other CA");
    cert::create_node(&other, &other.join("ca.key"), 2, &["127.0.0.1".into()], false).expect("other node cert");
    let other_node = Some((other.join("node.crt"), other.join("node.key")));
    let refused = peer_hello(peer, &ca, other_node, hello(Channel::Raft, 2, id)).await;
    assert!(refused.is_err(), "another CA's certificate got in");
    // A client certificate on the peer port.
    let app_cert = Some((security.client_cert.clone().expect("cert"), security.client_key.clone().expect("key")));
    let refused = peer_hello(peer, &ca, app_cert, hello(Channel::Rpc, 2, id)).await.expect_err("a user's certificate");
    assert!(refused.contains("user app, not a node"), "{refused}");
    // A node certificate (of this CA, for node 9) claiming node 2.
    let nine = dir.path().join("node-9-certs");
    cert::copy_ca(&dir.path().join("certs"), &nine, false).expect("CA copy");
    cert::create_node(&dir.path().join("certs"), &dir.path().join("certs/ca.key"), 9, &["127.0.0.1".into()], false)
        .expect("node 9 cert");
    for name in [cert::NODE_CERT_FILE, cert::NODE_KEY_FILE] {
        std::fs::rename(dir.path().join("certs").join(name), nine.join(name)).expect("move");
    }
    let node9 = || Some((nine.join("node.crt"), nine.join("node.key")));
    let refused = peer_hello(peer, &ca, node9(), hello(Channel::Raft, 2, id)).await.expect_err("claims node 2");
    assert!(refused.contains("names node 9, the handshake claims node 2"), "{refused}");
    // Node 9 of another cluster.
    let refused = peer_hello(peer, &ca, node9(), hello(Channel::Raft, 9, id ^ 1)).await.expect_err("other cluster");
    assert!(refused.contains("belongs to cluster"), "{refused}");
    // Node 9 that has joined no cluster: no Raft, and on the control plane only a join as
    // itself.
    let refused = peer_hello(peer, &ca, node9(), hello(Channel::Raft, 9, 0)).await.expect_err("Raft before joining");
    assert!(refused.contains("join first"), "{refused}");
    let joining = peer_rpc(peer, &ca, node9()).await;
    for r in dangerous(&cluster, &before) {
        let answer = joining.call_addr(peer, 1, r.clone()).await.expect("answered");
        assert!(matches!(answer, Response::Error(ProtoError::PermissionDenied(_))), "{r:?} -> {answer:?}");
    }

    // --- RESP ---
    let node2 = &cluster.nodes[1];
    plain_bytes_refused(&node2.resp, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n");
    let exchange = |bytes: &'static [u8]| {
        let (addr, ca) = (node2.resp.clone(), ca.clone());
        async move {
            let mut s = tls_connect(&addr, &ca, None).await.expect("TLS to RESP");
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(bytes).await.expect("send");
            let mut out = vec![0u8; 4096];
            let n =
                tokio::time::timeout(Duration::from_secs(10), s.read(&mut out)).await.expect("answer").expect("read");
            String::from_utf8_lossy(&out[..n]).into_owned()
        }
    };
    let answer = exchange(b"SET k v\r\n").await;
    assert!(answer.starts_with("-NOAUTH"), "{answer}");
    let answer = exchange(b"AUTH app wrong-password\r\n").await;
    assert!(answer.starts_with("-WRONGPASS"), "{answer}");
    let mut resp = redis_client(&security, &node2.resp).get_multiplexed_async_connection().await.expect("TLS + AUTH");
    let () = redis::cmd("SET").arg("resp-k").arg("v").query_async(&mut resp).await.expect("SET");
    let read_only = presage_playground::SecurityInfo {
        resp_user: Some(reader.clone()),
        resp_password: Some(reader_password.clone()),
        ..security.clone()
    };
    let mut ro = redis_client(&read_only, &node2.resp).get_multiplexed_async_connection().await.expect("reader");
    let got: Option<String> = redis::cmd("GET").arg("resp-k").query_async(&mut ro).await.expect("GET");
    assert_eq!(got.as_deref(), Some("v"));
    let e = redis::cmd("SET").arg("resp-k").arg("w").query_async::<()>(&mut ro).await.expect_err("NOPERM");
    assert!(e.to_string().contains("NOPERM"), "{e}");
    let out = redis_cli(&ca, &node2.resp, &user, &password, &["SET", "cli-k", "cli-v"]);
    assert_eq!(out.trim(), "OK", "redis-cli --tls: {out}");
    // Other users' connections and commands are for operators only; one's own is not.
    for cmd in [&["CLIENT", "LIST"][..], &["CLIENT", "KILL", "ID", "1"], &["SLOWLOG", "GET"]] {
        let out = redis_cli(&ca, &node2.resp, &user, &password, cmd);
        assert!(out.contains("NOPERM"), "{cmd:?} by a read-write user: {out}");
    }
    let out = redis_cli(&ca, &node2.resp, &user, &password, &["CLIENT", "INFO"]);
    assert!(out.contains(&format!("user={user}")), "CLIENT INFO: {out}");

    // --- admin API ---
    let admin = &cluster.nodes[2].admin;
    plain_bytes_refused(admin, b"GET /v1/cluster HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let no_token =
        presage_ctl::AdminClient::new(admin, &presage_ctl::AdminAccess::load(Some(&ca), None).expect("access"));
    let e = no_token.cluster_once().expect_err("no token");
    assert!(matches!(e, presage_ctl::CtlError::Api { status: 401, .. }), "{e}");
    let e = no_token.admin(&AdminCommand::Split { shard: 1, key: None }).expect_err("no token");
    assert!(matches!(e, presage_ctl::CtlError::Api { status: 401, .. }), "{e}");
    assert!(no_token.get_raw("/health").is_ok(), "liveness needs no token");
    let bad_token = presage_ctl::AdminClient::new(
        admin,
        &presage_ctl::AdminAccess::load(Some(&ca), Some("not-a-token".into())).expect("access"),
    );
    assert!(matches!(bad_token.cluster_once(), Err(presage_ctl::CtlError::Api { status: 401, .. })));
    let ctl = std::process::Command::new(env!("CARGO_BIN_EXE_presage-ctl"))
        .args(["--admin", admin, "--ca-cert"])
        .arg(&ca)
        .env("PRESAGE_TOKEN", security.admin_token.as_deref().expect("token"))
        .arg("nodes")
        .output()
        .expect("presage-ctl");
    let out = String::from_utf8_lossy(&ctl.stdout);
    assert!(ctl.status.success() && out.contains("tls") && !out.contains("INSECURE"), "{out}");

    // Nothing changed: shards, replicas and data as before, every replica's checksum equal at
    // one log index; every node runs.
    assert_eq!(shard_state(&pg), before, "shards and replicas unchanged");
    let admin1 = pg.admin(1).expect("admin").client();
    for s in &before {
        let v: serde_json::Value = admin1.get(&format!("/v1/shards/{}/checksums", s.id)).expect("checksums");
        assert_eq!(v["equal"], true, "shard {}: {v}", s.id);
        assert_eq!(v["replicas"].as_array().map(Vec::len), Some(s.replicas.len()), "{v}");
    }
    for i in 0..50u32 {
        assert_eq!(
            client.get(format!("before-{i:03}").as_bytes()).await.expect("get").as_deref(),
            Some(b"kept".as_slice())
        );
    }
    for n in &cluster.nodes {
        assert!(pg.is_running(n.id), "node {} still runs", n.id);
    }
    let log = std::fs::read_to_string(dir.path().join("node-1/node.log")).expect("log");
    assert!(log.contains("peer connection refused"), "refusals are logged");
    pg.stop(Duration::from_secs(15));
}

/// The control plane's channel on the peer port, as node 9 that has joined no cluster.
async fn peer_rpc(addr: &str, ca: &Path, identity: Option<(PathBuf, PathBuf)>) -> TcpRpc {
    struct AsNine {
        ca: PathBuf,
        identity: Option<(PathBuf, PathBuf)>,
    }
    impl presage_client::net::Connect for AsNine {
        fn connect(&self, addr: String, _to: u64) -> presage_client::net::ConnectFuture {
            let (ca, identity) = (self.ca.clone(), self.identity.clone());
            Box::pin(async move {
                let mut s = tls_connect(&addr, &ca, identity).await?;
                let hello = Hello { channel: Channel::Rpc, node_id: 9, cluster_id: 0 };
                handshake::dial(&mut s, &hello, Duration::from_secs(5)).await.map_err(std::io::Error::other)?;
                Ok(Box::new(s) as presage_client::net::BoxStream)
            })
        }
    }
    let _ = addr;
    let connect = Arc::new(AsNine { ca: ca.to_path_buf(), identity });
    TcpRpc::with_connector(NetConfig::default(), connect, None, Learns::Peer)
}

/// `redis-cli --tls` against `addr` (Debian's redis-tools, installed by `make test`): its
/// output.
fn redis_cli(ca: &Path, addr: &str, user: &str, password: &str, args: &[&str]) -> String {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let out = std::process::Command::new("redis-cli")
        .args(["--tls", "--cacert"])
        .arg(ca)
        .args(["-h", host, "-p", port, "--user", user, "--pass", password, "--no-auth-warning"])
        .args(args)
        .output()
        .expect("redis-cli runs (scripts/setup.sh installs redis-tools)");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Sends `bytes` on a TLS connection to `addr` (at `pace` per byte when given), then reads
/// until the node closes it or 20 s pass: what came back, and whether it closed.
async fn tls_exchange(addr: &str, ca: &Path, bytes: &[u8], pace: Option<Duration>) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tls_connect(addr, ca, None).await.expect("TLS");
    let sent = async {
        match pace {
            None => s.write_all(bytes).await,
            Some(p) => {
                for b in bytes {
                    s.write_all(std::slice::from_ref(b)).await?;
                    s.flush().await?;
                    tokio::time::sleep(p).await;
                }
                Ok(())
            }
        }
    };
    // The node may close the connection while bytes are still being sent.
    let _ = sent.await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
    let closed = matches!(read, Ok(Ok(_)) | Ok(Err(_)));
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// Oversize and slow inputs on a secure node: a RESP bulk announcing 1 GiB, a command of
/// 100,000 arguments and one of more, a client trickling a command, a native frame announcing
/// 1 GiB or trickling its body, a burst of 4 MiB values larger than a round's byte budget:
/// each gets an error or is cut off, the node keeps serving, nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_and_slow_inputs_are_cut_off_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = options(dir.path(), 1);
    opts.overrides.extend(
        ["resp.command-timeout-ms=\"2s\"", "native.frame-timeout-ms=\"2s\"", "raft.max-round-bytes=\"8MiB\""]
            .map(String::from),
    );
    let mut pg = Playground::start(&opts).await.expect("playground starts");
    let cluster = pg.cluster.clone();
    let security = cluster.security.clone();
    let ca = security.ca_cert.clone().expect("CA");
    let node = cluster.nodes[0].clone();

    // RESP: refused from the header, before the bytes.
    let (answer, closed) = tls_exchange(&node.resp, &ca, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1073741824\r\n", None).await;
    assert!(answer.contains("invalid bulk length") && closed, "{answer}");
    let (answer, closed) = tls_exchange(&node.resp, &ca, b"*100001\r\n", None).await;
    assert!(answer.contains("invalid multibulk length") && closed, "{answer}");
    // Before logging in, a command may not grow past 16 KiB.
    let mut early = b"*100000\r\n".to_vec();
    early.extend(std::iter::repeat_n(b"$1\r\nk\r\n".as_slice(), 5_000).flatten());
    let (answer, closed) = tls_exchange(&node.resp, &ca, &early, None).await;
    assert!(answer.contains("command larger than 16384 bytes") && closed, "{answer}");
    // Logged in, 100,000 arguments (the limit) are parsed and answered.
    let password = security.resp_password.clone().expect("password");
    let mut big = format!("AUTH app {password}\r\n*100000\r\n$6\r\nEXISTS\r\n").into_bytes();
    for _ in 1..100_000 {
        big.extend_from_slice(b"$1\r\nk\r\n");
    }
    big.extend_from_slice(b"*1\r\n$4\r\nQUIT\r\n");
    let (answer, _) = tls_exchange(&node.resp, &ca, &big, None).await;
    assert!(answer.starts_with("+OK\r\n") && answer.ends_with("+OK\r\n") && answer.len() > 10, "{answer:.200}");
    // A command trickled a byte at a time is cut off at resp.command-timeout-ms.
    let started = std::time::Instant::now();
    let trickle = b"*2\r\n$3\r\nGET\r\n$100\r\n".repeat(4);
    let (answer, closed) = tls_exchange(&node.resp, &ca, &trickle, Some(Duration::from_millis(200))).await;
    assert!(closed && answer.contains("not complete in time"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(15), "cut off, not served to the end");

    // Native: a frame announcing 1 GiB closes the connection at once; a body trickled past
    // native.frame-timeout-ms too.
    let (answer, closed) = tls_exchange(&node.native, &ca, &[0x40, 0, 0, 0, 0, 0, 0, 0], None).await;
    assert!(answer.is_empty() && closed);
    let mut slow = vec![0, 0, 0x10, 0, 0, 0, 0, 0];
    slow.extend_from_slice(&[0u8; 64]);
    let started = std::time::Instant::now();
    let (_, closed) = tls_exchange(&node.native, &ca, &slow, Some(Duration::from_millis(100))).await;
    assert!(closed && started.elapsed() < Duration::from_secs(15), "a trickled frame is cut off");

    // A burst of 4 MiB values, more than a round takes: each acknowledged or refused with a
    // retryable error; every acknowledged one reads back.
    let client = Arc::new(Client::connect(&cluster.native_addrs(), security.client_config()).await.expect("client"));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..24u8 {
        let client = Arc::clone(&client);
        tasks.spawn(async move {
            let value = vec![i; 4 << 20];
            (i, client.put(format!("big-{i}").as_bytes(), &value).await)
        });
    }
    let mut acked = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (i, r) = done.expect("task");
        match r {
            Ok(()) => acked.push(i),
            Err(e) => assert!(!e.to_string().is_empty(), "a clear error"),
        }
    }
    assert!(!acked.is_empty(), "some of the burst is acknowledged");
    for i in &acked {
        let got = client.get(format!("big-{i}").as_bytes()).await.expect("read back").expect("present");
        assert!(got.len() == 4 << 20 && got.iter().all(|b| b == i), "value {i} intact");
    }
    // Still serving everyone.
    let mut resp = redis_client(&security, &node.resp).get_multiplexed_async_connection().await.expect("RESP");
    let () = redis::cmd("SET").arg("after").arg("ok").query_async(&mut resp).await.expect("SET");
    assert!(pg.is_running(1));
    pg.stop(Duration::from_secs(15));
}
