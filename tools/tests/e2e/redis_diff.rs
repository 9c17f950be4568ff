//! The differential test: one script of Redis commands (`redis_diff.script`) run against a
//! real redis-server (Debian's, which `make test` installs) and against a Presage node, the
//! replies compared one by one. Exceptions are marked in the script itself (a tolerance on
//! times, sorted comparison of KEYS); README lists where Presage differs from Redis.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A redis-server started for the test, stopped when dropped.
struct RedisServer {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RedisServer {
    /// Starts redis-server on a free loopback port, with no persistence.
    async fn start() -> RedisServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("redis-server not found ({e}): install Debian's redis-server (`make test` does)")
            });
        let server = RedisServer { child, addr: format!("127.0.0.1:{port}"), _dir: dir };
        for _ in 0..100 {
            if std::net::TcpStream::connect(&server.addr).is_ok() {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("redis-server did not start listening on {}", server.addr);
    }
}

/// How one line's replies are compared.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Compare {
    Exact,
    /// Integers within this much of each other.
    Within(i64),
    /// Arrays as sets.
    Sorted,
}

/// The script's commands: (line number, comparison, arguments).
fn script() -> Vec<(usize, Compare, Vec<String>)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/redis_diff.script");
    let text = std::fs::read_to_string(&path).expect("the script");
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = split(line);
        let compare = match words[0].as_str() {
            "sorted" => Compare::Sorted,
            w if w.starts_with('~') => Compare::Within(w[1..].parse().expect("a tolerance")),
            _ => Compare::Exact,
        };
        if compare != Compare::Exact {
            words.remove(0);
        }
        out.push((i + 1, compare, words));
    }
    out
}

/// Words split at spaces, a double-quoted word kept whole.
fn split(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for ch in line.chars() {
        match ch {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

async fn send(conn: &mut redis::aio::MultiplexedConnection, args: &[String]) -> Result<redis::Value, String> {
    let mut cmd = redis::cmd(&args[0]);
    for a in &args[1..] {
        cmd.arg(a);
    }
    cmd.query_async(conn).await.map_err(|e| e.to_string())
}

fn same(compare: Compare, want: &Result<redis::Value, String>, got: &Result<redis::Value, String>) -> bool {
    use redis::Value::{Array, Int};
    match (compare, want, got) {
        (Compare::Within(n), Ok(Int(a)), Ok(Int(b))) => (a - b).abs() <= n,
        (Compare::Sorted, Ok(Array(a)), Ok(Array(b))) => {
            let key = |v: &redis::Value| format!("{v:?}");
            let (mut a, mut b): (Vec<String>, Vec<String>) = (a.iter().map(key).collect(), b.iter().map(key).collect());
            a.sort();
            b.sort();
            a == b
        }
        _ => want == got,
    }
}

/// Runs the script against redis-server and against the Presage node whose RESP listener is
/// `presage_resp` (plain TCP: an insecure node), failing on the first differing reply.
pub async fn check(presage_resp: &str) {
    let redis = RedisServer::start().await;
    let connect = |addr: String| async move {
        let client = redis::Client::open(format!("redis://{addr}/")).expect("url");
        client.get_multiplexed_async_connection().await.expect("connection")
    };
    let mut reference = connect(redis.addr.clone()).await;
    let mut presage = connect(presage_resp.to_string()).await;
    let commands = script();
    assert!(commands.len() > 100, "the script has {} commands", commands.len());
    for (line, compare, args) in &commands {
        let want = send(&mut reference, args).await;
        let got = send(&mut presage, args).await;
        assert!(
            same(*compare, &want, &got),
            "redis_diff.script line {line}: `{}`\n  redis-server: {want:?}\n  presage:      {got:?}",
            args.join(" ")
        );
    }
}
