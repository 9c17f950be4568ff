//! `presage playground`: a local cluster of separate node processes on loopback.
//!
//! Node `i` (from 1) lives in `DIR/node-i` (its `node.toml`, data and `node.log`), in
//! region `r{(i-1) % regions + 1}`; node 1 bootstraps the cluster and every node lists all
//! the others as join addresses, so any of them can be restarted alone with
//! `presage start --config DIR/node-i/node.toml`. Once the cluster serves (every node joined,
//! a probe write read back, every shard fully replicated) `DIR/cluster.json` describes it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use presage_client::{Client, ClientConfig};
use presage_shardmgr::NodeState;
use serde::{Deserialize, Serialize};

/// What to start.
#[derive(Debug, Clone)]
pub struct PlaygroundOptions {
    /// Nodes.
    pub nodes: u64,
    /// Regions (nodes are spread round-robin).
    pub regions: u64,
    /// Where everything goes.
    pub data_dir: PathBuf,
    /// `key=value` settings for every node.
    pub overrides: Vec<String>,
    /// The `presage` binary to run.
    pub binary: PathBuf,
    /// Give up waiting for the cluster after this long.
    pub ready_timeout: Duration,
}

/// One node of `cluster.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaygroundNode {
    /// Node id.
    pub id: u64,
    /// Process id.
    pub pid: u32,
    /// Region.
    pub region: String,
    /// Native protocol address.
    pub native: String,
    /// RESP address.
    pub resp: String,
    /// Admin API address.
    pub admin: String,
    /// Raft address.
    pub raft: String,
    /// Its configuration file.
    pub config: PathBuf,
}

/// `cluster.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterFile {
    /// Every node.
    pub nodes: Vec<PlaygroundNode>,
}

impl ClusterFile {
    /// Reads `DIR/cluster.json`.
    pub fn read(dir: &Path) -> Result<ClusterFile, String> {
        let path = dir.join("cluster.json");
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Native addresses of every node.
    pub fn native_addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.native.clone()).collect()
    }
}

/// Why the playground could not start.
#[derive(Debug, thiserror::Error)]
pub enum PlaygroundError {
    /// Bad options.
    #[error("{0}")]
    Invalid(String),
    /// A file or process could not be made.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The cluster did not come up.
    #[error("the cluster did not come up: {0}")]
    NotReady(String),
}

/// A running playground.
pub struct Playground {
    /// Its description (as written to `cluster.json`).
    pub cluster: ClusterFile,
    children: Vec<Child>,
    binary: PathBuf,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PlaygroundError {
    let what = what.into();
    move |source| PlaygroundError::Io { what, source }
}

/// Where [`free_ports`] looks first: below the kernel's ephemeral range, so the ports it
/// chooses are not taken by outgoing connections (which get ephemeral ports) between the
/// choice and the node binding them.
const PORT_FLOOR: u16 = 10_000;

/// The first port of the kernel's ephemeral range (Linux; 32768 elsewhere).
fn ephemeral_floor() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(32_768)
}

/// `n` free, distinct loopback ports, held until all are chosen. They come from below the
/// ephemeral range when there is room there (starting at a place derived from the process id
/// and a counter, so playgrounds started at once do not probe the same ports), else from the
/// kernel.
fn free_ports(n: usize) -> Result<Vec<u16>, PlaygroundError> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static STARTS: AtomicU32 = AtomicU32::new(0);
    let ceiling = ephemeral_floor();
    let mut held: Vec<std::net::TcpListener> = Vec::with_capacity(n);
    if ceiling > PORT_FLOOR + 1_000 {
        let span = u32::from(ceiling - PORT_FLOOR);
        let salt = std::process::id().wrapping_mul(7_919).wrapping_add(STARTS.fetch_add(1, Ordering::Relaxed) * 613);
        for probe in 0..span {
            if held.len() == n {
                break;
            }
            let port = PORT_FLOOR + ((salt.wrapping_add(probe)) % span) as u16;
            if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
                held.push(l);
            }
        }
    }
    while held.len() < n {
        held.push(std::net::TcpListener::bind("127.0.0.1:0").map_err(io("choosing free ports"))?);
    }
    held.iter().map(|l| l.local_addr().map(|a| a.port()).map_err(io("choosing free ports"))).collect()
}

/// The last `lines` lines of a node's log, backtrace frames left out (for error messages).
fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let frame = |l: &str| {
        let t = l.trim_start();
        t.starts_with("at ") || t.split_once(": ").is_some_and(|(n, _)| n.chars().all(|c| c.is_ascii_digit()))
    };
    let kept: Vec<&str> = text.lines().filter(|l| !frame(l)).collect();
    kept[kept.len().saturating_sub(lines)..].join("\n")
}

impl Playground {
    /// Starts the nodes and waits until the cluster serves.
    pub async fn start(opts: &PlaygroundOptions) -> Result<Playground, PlaygroundError> {
        if opts.nodes == 0 || opts.regions == 0 {
            return Err(PlaygroundError::Invalid("--nodes and --regions must be positive".into()));
        }
        std::fs::create_dir_all(&opts.data_dir).map_err(io(format!("creating {}", opts.data_dir.display())))?;
        let ports = free_ports(opts.nodes as usize * 4)?;
        let addr = |i: u64, k: usize| format!("127.0.0.1:{}", ports[(i as usize - 1) * 4 + k]);
        let mut nodes = Vec::new();
        for i in 1..=opts.nodes {
            let dir = opts.data_dir.join(format!("node-{i}"));
            std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
            let join: Vec<String> = (1..=opts.nodes).filter(|j| *j != i).map(|j| addr(j, 0)).collect();
            let config = format!(
                "# Written by `presage playground`.\nnode-id = {i}\nregion = \"r{}\"\ndata-dir = {:?}\nbootstrap = {}\n\
                 join = {:?}\nnative-listen = \"{}\"\nraft-listen = \"{}\"\nresp-listen = \"{}\"\nadmin-listen = \"{}\"\n\
                 fault-injection = true\ncapacity-bytes = \"10GiB\"\n\n[rocksdb]\nblock-cache-bytes = \"32MiB\"\n\
                 write-buffer-bytes = \"16MiB\"\n",
                (i - 1) % opts.regions + 1,
                dir.join("data").display().to_string(),
                i == 1,
                join,
                addr(i, 0),
                addr(i, 1),
                addr(i, 2),
                addr(i, 3),
            );
            let path = dir.join("node.toml");
            std::fs::write(&path, config).map_err(io(format!("writing {}", path.display())))?;
            nodes.push(PlaygroundNode {
                id: i,
                pid: 0,
                region: format!("r{}", (i - 1) % opts.regions + 1),
                native: addr(i, 0),
                resp: addr(i, 2),
                admin: addr(i, 3),
                raft: addr(i, 1),
                config: path,
            });
        }
        let mut children = Vec::new();
        for n in &mut nodes {
            let child = spawn_node(&opts.binary, &n.config, &opts.overrides)?;
            n.pid = child.id();
            children.push(child);
        }
        let mut pg = Playground { cluster: ClusterFile { nodes }, children, binary: opts.binary.clone() };
        if let Err(e) = pg.wait_ready(opts.ready_timeout).await {
            pg.stop(Duration::from_secs(5));
            return Err(e);
        }
        let path = opts.data_dir.join("cluster.json");
        let json = serde_json::to_vec_pretty(&pg.cluster).map_err(|e| io("cluster.json")(std::io::Error::other(e)))?;
        std::fs::write(&path, json).map_err(io(format!("writing {}", path.display())))?;
        Ok(pg)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), PlaygroundError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let n = self.cluster.nodes.len();
        let rf = n.min(3);
        let mut last = String::from("starting");
        while tokio::time::Instant::now() < deadline {
            for (c, node) in self.children.iter_mut().zip(&self.cluster.nodes) {
                if let Ok(Some(status)) = c.try_wait() {
                    let log = node.config.with_file_name("node.log");
                    return Err(PlaygroundError::NotReady(format!(
                        "node {} exited ({status}); see {}; it ends with:\n{}",
                        node.id,
                        log.display(),
                        log_tail(&log, 20)
                    )));
                }
            }
            match ready(&self.cluster.native_addrs(), n, rf).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Err(PlaygroundError::NotReady(format!("not ready within {timeout:?}: {last}")))
    }

    /// Kills node `id` at once (SIGKILL), as a crash would.
    pub fn kill(&mut self, id: u64) {
        if let Some(i) = self.cluster.nodes.iter().position(|n| n.id == id) {
            let _ = self.children[i].kill();
            let _ = self.children[i].wait();
        }
    }

    /// Whether node `id`'s process is still running (false once it exited, for any reason).
    pub fn is_running(&mut self, id: u64) -> bool {
        let Some(i) = self.cluster.nodes.iter().position(|n| n.id == id) else { return false };
        matches!(self.children[i].try_wait(), Ok(None))
    }

    /// Starts node `id` again from its configuration (after [`Playground::kill`]).
    pub fn restart(&mut self, id: u64, overrides: &[String]) -> Result<(), PlaygroundError> {
        let i = self
            .cluster
            .nodes
            .iter()
            .position(|n| n.id == id)
            .ok_or_else(|| PlaygroundError::Invalid(format!("no node {id}")))?;
        let child = spawn_node(&self.binary, &self.cluster.nodes[i].config, overrides)?;
        self.cluster.nodes[i].pid = child.id();
        self.children[i] = child;
        Ok(())
    }

    /// Stops every node: SIGTERM (graceful), then SIGKILL after `grace`. Returns how many
    /// nodes had to be killed.
    pub fn stop(&mut self, grace: Duration) -> usize {
        for c in &self.children {
            terminate(c.id());
        }
        let deadline = std::time::Instant::now() + grace;
        let mut killed = 0;
        for c in &mut self.children {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if std::time::Instant::now() >= deadline => {
                        let _ = c.kill();
                        let _ = c.wait();
                        killed += 1;
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        killed
    }
}

impl Drop for Playground {
    /// Nodes still running when the playground goes away (a failed test) are killed.
    fn drop(&mut self) {
        for c in &mut self.children {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Starts `presage start --config CONFIG`, its output appended to `node.log` beside it.
pub fn spawn_node(binary: &Path, config: &Path, overrides: &[String]) -> Result<Child, PlaygroundError> {
    let log_path = config.with_file_name("node.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io(format!("opening {}", log_path.display())))?;
    let err = log.try_clone().map_err(io("node.log"))?;
    let mut cmd = Command::new(binary);
    cmd.arg("start").arg("--config").arg(config);
    for o in overrides {
        cmd.arg("--set").arg(o);
    }
    cmd.stdin(Stdio::null()).stdout(log).stderr(err);
    cmd.spawn().map_err(io(format!("starting {}", binary.display())))
}

/// Sends SIGTERM to `pid`.
pub fn terminate(pid: u32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
}

/// Has the cluster at `seeds` got `nodes` Up nodes, a working write and read, and every
/// shard replicated `rf` times?
pub async fn ready(seeds: &[String], nodes: usize, rf: usize) -> Result<(), String> {
    let cfg = ClientConfig { request_timeout_ms: 2_000, ..ClientConfig::default() };
    let client = Client::connect(seeds, cfg).await.map_err(|e| e.to_string())?;
    let info = client.cluster_info().await.map_err(|e| e.to_string())?;
    let up = info.nodes.iter().filter(|n| n.state == NodeState::Up).count();
    if up < nodes {
        return Err(format!("{up} of {nodes} nodes joined"));
    }
    client.put(b"playground-probe", b"ok").await.map_err(|e| e.to_string())?;
    if client.get(b"playground-probe").await.map_err(|e| e.to_string())?.as_deref() != Some(b"ok".as_slice()) {
        return Err("the probe write did not read back".into());
    }
    client.delete(b"playground-probe").await.map_err(|e| e.to_string())?;
    client.refresh(b"").await?;
    let routes = client.cached_routes();
    if let Some(s) = routes.iter().find(|s| s.voters().len() < rf || s.has_learners()) {
        return Err(format!("shard {} has {} of {rf} voters", s.id, s.voters().len()));
    }
    if info.stats.running_operators > 0 {
        return Err(format!("{} operators running", info.stats.running_operators));
    }
    Ok(())
}
