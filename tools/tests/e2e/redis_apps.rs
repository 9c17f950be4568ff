//! Small applications on Redis client libraries against a running playground: redis-rs here
//! and redis-py (`redis_app.py`, Debian's python3-redis, which `make test` installs). Each
//! keeps sessions with a time to live, a rate-limit counter (INCR + EXPIRE), a hash per
//! user, and moves money between two accounts under WATCH/MULTI from several connections.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use presage_playground::{PlaygroundNode, SecurityInfo};
use redis::AsyncCommands;

/// Runs both applications against `node`.
pub async fn run(security: &SecurityInfo, node: &PlaygroundNode) {
    rust_app(security, &node.resp).await;
    python_app(security, &node.resp);
}

async fn rust_app(security: &SecurityInfo, addr: &str) {
    let mut r = super::redis_conn(security, addr).await;

    // Sessions with a time to live.
    let () = r.set_ex("rs:session:1", "token-1", 30).await.expect("SETEX");
    let () = r.pset_ex("rs:session:2", "token-2", 200).await.expect("PSETEX");
    let ttl: i64 = r.ttl("rs:session:1").await.expect("TTL");
    assert!((25..=30).contains(&ttl), "a session's TTL: {ttl}");
    let refreshed: bool = r.expire("rs:session:1", 60).await.expect("EXPIRE");
    assert!(refreshed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let gone: Option<String> = r.get("rs:session:2").await.expect("GET");
    assert_eq!(gone, None, "a session past its TTL is gone");

    // A rate-limit window: INCR, with EXPIRE set once; INCR keeps the expiry.
    for i in 1..=5i64 {
        let (count, _): (i64, i64) = redis::pipe()
            .incr("rs:rate:user-7", 1)
            .cmd("EXPIRE")
            .arg("rs:rate:user-7")
            .arg(60)
            .arg("NX")
            .query_async(&mut r)
            .await
            .expect("INCR + EXPIRE");
        assert_eq!(count, i);
    }
    let ttl: i64 = r.ttl("rs:rate:user-7").await.expect("TTL");
    assert!((55..=60).contains(&ttl), "the window's TTL was kept by INCR: {ttl}");

    // A hash per user.
    let () = r.hset_multiple("rs:user:42", &[("name", "Ann"), ("email", "ann@example.com")]).await.expect("HSET");
    for _ in 0..3 {
        let _: i64 = r.hincr("rs:user:42", "logins", 1).await.expect("HINCRBY");
    }
    let user: BTreeMap<String, String> = r.hgetall("rs:user:42").await.expect("HGETALL");
    let want: BTreeMap<String, String> =
        [("name", "Ann"), ("email", "ann@example.com"), ("logins", "3")].map(|(k, v)| (k.into(), v.into())).into();
    assert_eq!(user, want);
    let removed: i64 = r.hdel("rs:user:42", "email").await.expect("HDEL");
    assert_eq!(removed, 1);

    // Transfers under WATCH/MULTI from four connections: every one applies exactly once.
    let () = r.mset(&[("rs:acct:alice", 100), ("rs:acct:bob", 0)]).await.expect("MSET");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (security, addr) = (security.clone(), addr.to_string());
        tasks.spawn(async move {
            let mut c = super::redis_conn(&security, &addr).await;
            let mut retries = 0;
            for _ in 0..10 {
                while !transfer(&mut c, 1).await {
                    retries += 1;
                }
            }
            retries
        });
    }
    let mut retries = 0;
    while let Some(r) = tasks.join_next().await {
        retries += r.expect("a transfer task");
    }
    let balances: (i64, i64) = r.mget(&["rs:acct:alice", "rs:acct:bob"]).await.expect("MGET");
    assert_eq!(balances, (60, 40), "40 transfers of 1, each once ({retries} retried after a conflict)");
}

/// Moves `amount` from alice to bob under WATCH; `false` if a concurrent change aborted it.
async fn transfer(c: &mut redis::aio::MultiplexedConnection, amount: i64) -> bool {
    let () = redis::cmd("WATCH").arg("rs:acct:alice").arg("rs:acct:bob").query_async(c).await.expect("WATCH");
    let (alice, bob): (i64, i64) = c.mget(&["rs:acct:alice", "rs:acct:bob"]).await.expect("MGET");
    let done: Option<((), ())> = redis::pipe()
        .atomic()
        .set("rs:acct:alice", alice - amount)
        .set("rs:acct:bob", bob + amount)
        .query_async(c)
        .await
        .expect("MULTI/EXEC");
    done.is_some()
}

fn python_app(security: &SecurityInfo, addr: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/redis_app.py");
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    // Debian's interpreter, where python3-redis is installed (not a virtualenv's).
    let mut cmd = std::process::Command::new("/usr/bin/python3");
    cmd.arg(&script).args([host, port]);
    if let Some(ca) = &security.ca_cert {
        cmd.arg("--ca").arg(ca);
        cmd.args(["--user", security.resp_user.as_deref().expect("user")]);
        cmd.args(["--password", security.resp_password.as_deref().expect("password")]);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("/usr/bin/python3 did not run ({e}): `make test` installs it"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the redis-py application failed:\n{text}");
    assert!(text.contains("redis-py application scenario passed"), "{text}");
}
