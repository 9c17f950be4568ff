//! A replication-only node for multi-process tests: one shard over the whole key space on
//! RocksDB, Raft over TCP, driven by line commands on stdin with one answer line each on
//! stdout. The real server (`presage node`) adds routing and client protocols on top of the
//! same parts.
//!
//! Commands: `put KEY VALUE`, `get KEY`, `status`, `stats`. Answers: `ok`, `value V`, `none`,
//! `notleader HINT` (0 when unknown), `status ROLE LEADER TERM COMMIT APPLIED`,
//! `stats FRAMES_SENT FRAMES_RECEIVED FRAMES_REJECTED`, `err MESSAGE`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use presage_engine::{RocksConfig, RocksEngine};
use presage_replication::{
    AddressBook, Epoch, Error, NodeHandle, Op, RaftConfig, ReadRequest, ReadResponse, Replica, ShardDescriptor, Store,
    TcpConfig, TcpNode, TcpStats,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The shard this node serves.
const SHARD: u64 = 1;
/// Longest time one command may take.
const COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Parser)]
struct Args {
    /// This node's id.
    #[arg(long)]
    id: u64,
    /// Directory of its RocksDB.
    #[arg(long)]
    data_dir: PathBuf,
    /// Every node of the cluster, this one included, as ID=HOST:PORT.
    #[arg(long = "peer", value_parser = parse_peer, required = true)]
    peers: Vec<(u64, SocketAddr)>,
    /// Length of a Raft tick, in milliseconds.
    #[arg(long, default_value_t = 20)]
    tick_ms: u64,
}

fn parse_peer(s: &str) -> Result<(u64, SocketAddr), String> {
    let (id, addr) = s.split_once('=').ok_or("expected ID=HOST:PORT")?;
    Ok((id.parse().map_err(|e| format!("bad id: {e}"))?, addr.parse().map_err(|e| format!("bad address: {e}"))?))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let raft = RaftConfig { tick_interval_ms: args.tick_ms, ..RaftConfig::default() };
    let engine = RocksEngine::open(&args.data_dir, &RocksConfig::default()).context("open engine")?;
    let mut store = Store::open(args.id, engine, raft.clone()).context("open store")?;
    if store.shard_ids().is_empty() {
        store.bootstrap_shard(ShardDescriptor {
            id: SHARD,
            start: Vec::new(),
            end: None,
            epoch: Some(Epoch { version: 1, conf_ver: 1 }),
            replicas: args.peers.iter().map(|(id, _)| Replica::voter(*id)).collect(),
            merging_into: None,
        })?;
    }
    let book = AddressBook::default();
    for (id, addr) in &args.peers {
        book.set(*id, *addr);
    }
    let listen = book.get(args.id).context("--peer must list this node")?;
    // After a kill -9 the port may still be held for a moment (or taken by an outgoing
    // connection's ephemeral port): wait for it rather than fail.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while let Err(e) = std::net::TcpListener::bind(listen) {
        anyhow::ensure!(std::time::Instant::now() < deadline, "cannot listen on {listen}: {e}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let tcp = TcpNode::start(store, &raft, TcpConfig::default(), listen, book).await?;
    let handle = tcp.node.handle();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    println!("ready");
    while let Some(line) = lines.next_line().await? {
        // A command that cannot finish (no quorum) answers within the deadline instead of hanging.
        let answer = tokio::time::timeout(COMMAND_TIMEOUT, execute(&handle, &tcp.stats, &line))
            .await
            .unwrap_or_else(|_| "err timed out".into());
        stdout.write_all(format!("{answer}\n").as_bytes()).await?;
        stdout.flush().await?;
    }
    Ok(())
}

async fn execute(node: &NodeHandle, stats: &TcpStats, line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let epoch = match node.status(SHARD).await {
        Ok(Some(s)) => s.descriptor.epoch(),
        Ok(None) => return "err no replica".into(),
        Err(e) => return format!("err {e}"),
    };
    match words.as_slice() {
        ["put", key, value] => match node.write(SHARD, epoch, vec![Op::put(key.as_bytes(), value.as_bytes())]).await {
            Ok(()) => "ok".into(),
            Err(e) => error(e),
        },
        ["get", key] => match node.read(SHARD, epoch, ReadRequest::Get(key.as_bytes().to_vec())).await {
            Ok(ReadResponse::Value(Some(v))) => format!("value {}", String::from_utf8_lossy(&v)),
            Ok(ReadResponse::Value(None)) => "none".into(),
            Ok(other) => format!("err unexpected answer {other:?}"),
            Err(e) => error(e),
        },
        ["status"] => match node.status(SHARD).await {
            Ok(Some(s)) => {
                format!("status {:?} {} {} {} {}", s.role, s.leader.unwrap_or(0), s.term, s.commit, s.applied)
            }
            Ok(None) => "err no replica".into(),
            Err(e) => format!("err {e}"),
        },
        ["stats"] => format!(
            "stats {} {} {}",
            TcpStats::get(&stats.frames_sent),
            TcpStats::get(&stats.frames_received),
            TcpStats::get(&stats.frames_rejected)
        ),
        _ => format!("err unknown command {line:?}"),
    }
}

fn error(e: Error) -> String {
    match e {
        Error::NotLeader { leader, .. } => format!("notleader {}", leader.unwrap_or(0)),
        e => format!("err {e}"),
    }
}
