//! Replication over TCP on RocksDB, one process per node (design.md §8 tier 3): the basic
//! cases, `kill -9` of a node and its restart from disk, and bad frames on the wire.
//! Deadlines here bound liveness only; nothing asserts on speed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

/// One node process.
struct Proc {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Proc {
    fn ask(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").expect("write to node");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read from node");
        assert!(!line.is_empty(), "node exited while answering {cmd:?}");
        line.trim_end().to_string()
    }

    /// (role, leader, term, commit, applied)
    fn status(&mut self) -> (String, u64, u64, u64, u64) {
        let a = self.ask("status");
        let w: Vec<&str> = a.split_whitespace().collect();
        let num = |i: usize| w.get(i).and_then(|s| s.parse().ok()).unwrap_or(0);
        (w.get(1).unwrap_or(&"?").to_string(), num(2), num(3), num(4), num(5))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Nodes `1..=n` on loopback, each with its own data directory.
struct ProcCluster {
    dir: tempfile::TempDir,
    peers: Vec<(u64, SocketAddr)>,
    procs: Vec<Option<Proc>>,
}

impl ProcCluster {
    fn start(n: u64) -> Self {
        // Reserve ports by binding, then release them for the nodes.
        let listeners: Vec<TcpListener> =
            (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port")).collect();
        let peers = listeners.iter().zip(1..).map(|(l, id)| (id, l.local_addr().expect("addr"))).collect();
        drop(listeners);
        let mut c = ProcCluster { dir: tempfile::tempdir().expect("tempdir"), peers, procs: Vec::new() };
        for id in 1..=n {
            let p = c.spawn(id);
            c.procs.push(Some(p));
        }
        c
    }

    fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    fn spawn(&self, id: u64) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_presage-test-node"));
        cmd.arg("--id").arg(id.to_string()).arg("--data-dir").arg(self.data_dir(id));
        for (pid, addr) in &self.peers {
            cmd.arg("--peer").arg(format!("{pid}={addr}"));
        }
        let mut child =
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("spawn node");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("node starts");
        assert_eq!(line.trim(), "ready", "node {id} did not start");
        Proc { child, stdin, stdout }
    }

    fn node(&mut self, id: u64) -> &mut Proc {
        self.procs[(id - 1) as usize].as_mut().expect("node is running")
    }

    /// `kill -9`.
    fn kill(&mut self, id: u64) {
        let mut p = self.procs[(id - 1) as usize].take().expect("node is running");
        p.child.kill().expect("SIGKILL");
        p.child.wait().expect("reap");
    }

    fn restart(&mut self, id: u64) {
        assert!(self.procs[(id - 1) as usize].is_none(), "node {id} is running");
        let p = self.spawn(id);
        self.procs[(id - 1) as usize] = Some(p);
    }

    fn running(&self) -> Vec<u64> {
        (1..).zip(&self.procs).filter(|(_, p)| p.is_some()).map(|(id, _)| id).collect()
    }

    fn wait_leader(&mut self, deadline: Duration) -> u64 {
        let until = Instant::now() + deadline;
        while Instant::now() < until {
            for id in self.running() {
                if self.node(id).status().0 == "Leader" {
                    return id;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no leader within {deadline:?}");
    }

    /// Sends `cmd` to the leader, following hints and retrying until it is answered.
    fn leader_ask(&mut self, cmd: &str, deadline: Duration) -> String {
        let until = Instant::now() + deadline;
        let mut target = self.running()[0];
        loop {
            let a = self.node(target).ask(cmd);
            if !a.starts_with("notleader") && !a.starts_with("err") {
                return a;
            }
            assert!(Instant::now() < until, "{cmd:?} not served within {deadline:?}: {a}");
            let hint = a.strip_prefix("notleader ").and_then(|h| h.parse().ok()).unwrap_or(0);
            target = if self.running().contains(&hint) {
                hint
            } else {
                std::thread::sleep(Duration::from_millis(50));
                let r = self.running();
                r[(r.iter().position(|x| *x == target).unwrap_or(0) + 1) % r.len()]
            };
        }
    }

    fn wait_applied(&mut self, id: u64, index: u64, deadline: Duration) {
        let until = Instant::now() + deadline;
        while self.node(id).status().4 < index {
            assert!(Instant::now() < until, "node {id} did not apply {index} within {deadline:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

const DEADLINE: Duration = Duration::from_secs(30);

fn put_range(c: &mut ProcCluster, range: std::ops::Range<u32>) {
    for i in range {
        assert_eq!(c.leader_ask(&format!("put k{i:04} v{i}"), DEADLINE), "ok");
    }
}

fn check_range(c: &mut ProcCluster, range: std::ops::Range<u32>) {
    for i in range {
        assert_eq!(c.leader_ask(&format!("get k{i:04}"), DEADLINE), format!("value v{i}"), "key k{i:04}");
    }
}

/// Election, replication, `kill -9` of a follower and then of the leader, each restarted
/// from its RocksDB: no acknowledged write is lost and every replica converges.
#[test]
fn three_processes_survive_kill_9_and_restart_from_disk() {
    let mut c = ProcCluster::start(3);
    let leader = c.wait_leader(DEADLINE);
    put_range(&mut c, 0..100);
    check_range(&mut c, 0..100);

    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    c.kill(follower);
    put_range(&mut c, 100..150); // two of three still commit

    c.restart(follower);
    let leader = c.wait_leader(DEADLINE);
    let commit = c.node(leader).status().3;
    c.wait_applied(follower, commit, DEADLINE);

    let old_leader = c.wait_leader(DEADLINE);
    c.kill(old_leader);
    let new_leader = c.wait_leader(DEADLINE);
    assert_ne!(new_leader, old_leader);
    check_range(&mut c, 0..150);
    put_range(&mut c, 150..200);

    c.restart(old_leader);
    let leader = c.wait_leader(DEADLINE);
    let commit = c.node(leader).status().3;
    for id in 1..=3 {
        c.wait_applied(id, commit, DEADLINE);
    }
    check_range(&mut c, 0..200);
}

fn rejected_frames(p: &mut Proc) -> u64 {
    p.ask("stats").split_whitespace().nth(3).and_then(|s| s.parse().ok()).expect("stats answer")
}

/// Sends `bytes` on a fresh connection and waits for the node to close it.
fn expect_closed(addr: SocketAddr, bytes: &[u8], what: &str) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s.write_all(bytes).expect("send");
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("{what}: the node should close the connection, got {other:?}"),
    }
}

/// A frame with a bad crc, an oversize length or garbage is rejected and its connection
/// closed; the node keeps serving.
#[test]
fn bad_frames_close_the_connection_and_the_node_survives() {
    let seed = std::env::var("PRESAGE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(11u64);
    eprintln!("test seed {seed} (replay with PRESAGE_TEST_SEED={seed})");
    let mut c = ProcCluster::start(1);
    c.wait_leader(DEADLINE);
    put_range(&mut c, 0..5);
    let addr = c.peers[0].1;

    let body = b"not a raft batch, but crc-checked";
    let mut bad_crc = (body.len() as u32).to_be_bytes().to_vec();
    bad_crc.extend_from_slice(&(crc32fast::hash(body) ^ 1).to_be_bytes());
    bad_crc.extend_from_slice(body);
    expect_closed(addr, &bad_crc, "bad crc");

    let mut oversize = u32::MAX.to_be_bytes().to_vec();
    oversize.extend_from_slice(&[0; 4]);
    expect_closed(addr, &oversize, "oversize length");

    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut garbage = vec![0u8; 4096];
    rng.fill(&mut garbage[..]);
    // A length that matches what is sent, so the crc check is what rejects it.
    garbage[..4].copy_from_slice(&(4096u32 - 8).to_be_bytes());
    expect_closed(addr, &garbage, "garbage");

    let mut well_checked_nonsense = (body.len() as u32).to_be_bytes().to_vec();
    well_checked_nonsense.extend_from_slice(&crc32fast::hash(body).to_be_bytes());
    well_checked_nonsense.extend_from_slice(body);
    expect_closed(addr, &well_checked_nonsense, "valid crc over a malformed body");

    assert_eq!(rejected_frames(c.node(1)), 4);
    put_range(&mut c, 5..10);
    check_range(&mut c, 0..10);
}
