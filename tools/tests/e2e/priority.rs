//! Admission by priority on a real cluster (seed 001): with the bulk limit at one request in
//! flight, a burst of concurrent bulk writes is partly shed (`Overloaded`, retried by the client
//! until every one is done) while concurrent critical writes are never shed; only users the
//! users file grants it may send critical requests (native and RESP); `CLIENT PRIORITY` reads
//! and sets a RESP connection's priority; the node exports its admission figures.

use std::sync::Arc;

use presage_client::{Client, ClientError, Priority, ProtoError};
use presage_playground::{Playground, SecurityInfo};

use super::{options, redis_client};

fn metric(text: &str, name: &str) -> f64 {
    text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_requests_are_shed_first_and_only_granted_users_send_critical_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = options(dir.path(), 3);
    opts.overrides.push("server.admission.max-bulk-inflight-requests=1".to_string());
    let pg = Playground::start(&opts).await.expect("playground starts");
    let security = pg.cluster.security.clone();
    let connect = |priority: Priority, cfg: presage_client::ClientConfig| {
        let addrs = pg.cluster.native_addrs();
        async move {
            Arc::new(Client::connect(&addrs, presage_client::ClientConfig { priority, ..cfg }).await.expect("client"))
        }
    };
    // Bulk writes retry for as long as it takes on a loaded machine.
    let patient = presage_client::ClientConfig { request_timeout_ms: 120_000, ..pg.client_config() };
    let bulk = connect(Priority::Bulk, patient).await;
    let critical = connect(Priority::Critical, pg.client_config()).await;
    critical.put(b"warm", b"up").await.expect("warm-up");

    // 16 bulk writers and 4 critical ones at once, 20 writes each.
    let mut tasks = Vec::new();
    for (client, prefix, writers) in [(&bulk, "bulk", 16), (&critical, "crit", 4)] {
        for w in 0..writers {
            let client = Arc::clone(client);
            tasks.push(tokio::spawn(async move {
                for i in 0..20 {
                    client.put(format!("{prefix}-{w:02}-{i:02}").as_bytes(), b"v").await.expect("written in the end");
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let mut shed = [0.0; 3];
    let mut exported = false;
    for (_, admin) in pg.admins(None) {
        let text = tokio::task::spawn_blocking(move || admin.client().get_raw("/metrics")).await.expect("join");
        let text = text.expect("metrics");
        exported |= text.contains("presage_admission_limit_requests{priority=\"bulk\"} 1");
        for p in Priority::ALL {
            shed[p.index()] += metric(&text, &format!("presage_admission_shed_total{{priority=\"{p}\"}}"));
        }
    }
    assert!(exported, "the bulk limit is exported");
    assert!(shed[Priority::Bulk.index()] > 0.0, "bulk requests were shed: {shed:?}");
    assert_eq!(shed[Priority::Critical.index()], 0.0, "no critical request was shed: {shed:?}");
    for w in 0..16 {
        assert!(bulk.get(format!("bulk-{w:02}-19").as_bytes()).await.expect("read").is_some(), "bulk writer {w}");
    }

    // The reader may lower its priority, not raise it.
    let reader_cfg = SecurityInfo {
        resp_user: security.read_only_user.clone(),
        resp_password: security.read_only_password.clone(),
        ..security.clone()
    }
    .client_config();
    if security.read_only_user.is_some() {
        let reader = connect(Priority::Critical, reader_cfg.clone()).await;
        match reader.get(b"warm").await {
            Err(ClientError::Refused(ProtoError::PermissionDenied(m))) => assert!(m.contains("priority"), "{m}"),
            other => panic!("a reader's critical read: {other:?}"),
        }
        let reader = connect(Priority::Bulk, reader_cfg).await;
        assert_eq!(reader.get(b"warm").await.expect("bulk read"), Some(b"up".to_vec()));

        // RESP: the app user's default is critical (the users file grants it); the reader's
        // is normal and it may not raise it.
        let node = &pg.cluster.nodes[0];
        let mut app = redis_client(&security, &node.resp).get_multiplexed_async_connection().await.expect("app");
        let p: String = redis::cmd("CLIENT").arg("PRIORITY").query_async(&mut app).await.expect("CLIENT PRIORITY");
        assert_eq!(p, "critical");
        let () = redis::cmd("CLIENT").arg("PRIORITY").arg("bulk").query_async(&mut app).await.expect("lowered");
        let () = redis::cmd("SET").arg("resp-bulk").arg("v").query_async(&mut app).await.expect("SET at bulk");
        let ro = SecurityInfo {
            resp_user: security.read_only_user.clone(),
            resp_password: security.read_only_password.clone(),
            ..security.clone()
        };
        let mut ro = redis_client(&ro, &node.resp).get_multiplexed_async_connection().await.expect("reader");
        let p: String = redis::cmd("CLIENT").arg("PRIORITY").query_async(&mut ro).await.expect("CLIENT PRIORITY");
        assert_eq!(p, "normal");
        let e =
            redis::cmd("CLIENT").arg("PRIORITY").arg("critical").query_async::<()>(&mut ro).await.expect_err("NOPERM");
        assert!(e.to_string().contains("NOPERM"), "{e}");
        let e = redis::cmd("CLIENT").arg("PRIORITY").arg("urgent").query_async::<()>(&mut ro).await.expect_err("bad");
        assert!(e.to_string().contains("critical, normal or bulk"), "{e}");
    }
}
