//! `presage playground`: a local cluster of separate node processes on loopback.
//!
//! Node `i` (from 1) lives in `DIR/node-i` (its `node.toml`, data and `node.log`), in
//! region `r{(i-1) % regions + 1}`; node 1 bootstraps the cluster and every node lists all
//! the others as join addresses, so any of them can be restarted alone with
//! `presage start --config DIR/node-i/node.toml`. Once the cluster serves (every node joined,
//! a probe write read back, every shard fully replicated) `DIR/cluster.json` describes it.
//!
//! **Secure by default** (design.md §10): the playground makes a cluster CA
//! (`DIR/certs/ca.crt`, `ca.key`), each node's certificate (`DIR/node-i/certs/`), a client
//! certificate for the user `app` (`DIR/certs/client.app.{crt,key}`), and `DIR/users.toml`
//! with the users `app` (read-write) and `reader` (read-only) under random passwords and an
//! operator token for the admin API; `cluster.json`'s `security` object says where they are.
//! `--insecure` starts the plain-text cluster of old (every `security` key but `insecure`
//! null).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use presage_client::{Client, ClientConfig, ClientTls, Login};
use presage_security::cert;
use presage_security::credentials::UsersFile;
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
    /// No TLS and no credentials (development only).
    pub insecure: bool,
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

/// How to reach a playground's nodes (`cluster.json`'s `security`; scripts depend on these
/// keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityInfo {
    /// The cluster runs without TLS and credentials.
    pub insecure: bool,
    /// The cluster CA's certificate (TLS clients trust it).
    pub ca_cert: Option<PathBuf>,
    /// A client certificate of the user `resp_user`.
    pub client_cert: Option<PathBuf>,
    /// Its key.
    pub client_key: Option<PathBuf>,
    /// A read-write user (RESP `AUTH`, native logins).
    pub resp_user: Option<String>,
    /// Its password.
    pub resp_password: Option<String>,
    /// An operator token of the admin API.
    pub admin_token: Option<String>,
    /// A read-only user.
    #[serde(default)]
    pub read_only_user: Option<String>,
    /// Its password.
    #[serde(default)]
    pub read_only_password: Option<String>,
    /// The users file every node reads.
    #[serde(default)]
    pub users_file: Option<PathBuf>,
}

impl SecurityInfo {
    fn insecure() -> SecurityInfo {
        SecurityInfo {
            insecure: true,
            ca_cert: None,
            client_cert: None,
            client_key: None,
            resp_user: None,
            resp_password: None,
            admin_token: None,
            read_only_user: None,
            read_only_password: None,
            users_file: None,
        }
    }

    /// A client configuration that logs in as the read-write user over TLS (plain TCP when
    /// insecure).
    pub fn client_config(&self) -> ClientConfig {
        let mut cfg = ClientConfig::default();
        if let Some(ca_cert) = &self.ca_cert {
            cfg.tls =
                Some(ClientTls { ca_cert: ca_cert.clone(), client_cert: None, client_key: None, server_name: None });
        }
        if let (Some(user), Some(password)) = (&self.resp_user, &self.resp_password) {
            cfg.login = Some(Login { user: user.clone(), password: password.clone() });
        }
        cfg
    }

    /// The admin API's access: its CA and the operator token.
    pub fn admin_access(&self) -> Result<presage_ctl::AdminAccess, presage_ctl::CtlError> {
        presage_ctl::AdminAccess::load(self.ca_cert.as_deref(), self.admin_token.clone())
    }
}

/// `cluster.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterFile {
    /// Every node.
    pub nodes: Vec<PlaygroundNode>,
    /// TLS and credentials.
    pub security: SecurityInfo,
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

    /// Every node's admin API, by node id.
    pub fn admins(&self) -> Result<Vec<(u64, presage_ctl::AdminEndpoint)>, presage_ctl::CtlError> {
        let access = self.security.admin_access()?;
        Ok(self
            .nodes
            .iter()
            .map(|n| (n.id, presage_ctl::AdminEndpoint { addr: n.admin.clone(), access: access.clone() }))
            .collect())
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
    /// Certificates or users could not be made.
    #[error("security: {0}")]
    Security(#[from] presage_security::SecurityError),
}

/// A running playground.
pub struct Playground {
    /// Its description (as written to `cluster.json`).
    pub cluster: ClusterFile,
    children: Vec<Child>,
    binary: PathBuf,
    access: presage_ctl::AdminAccess,
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
        let security =
            if opts.insecure { SecurityInfo::insecure() } else { make_security(&opts.data_dir, opts.nodes)? };
        let mut nodes = Vec::new();
        for i in 1..=opts.nodes {
            let dir = opts.data_dir.join(format!("node-{i}"));
            std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
            // Join through the other nodes' peer ports.
            let join: Vec<String> = (1..=opts.nodes).filter(|j| *j != i).map(|j| addr(j, 1)).collect();
            let security_toml = match &security.users_file {
                Some(users) if !security.insecure => format!(
                    "\n[security]\ncerts-dir = {:?}\nusers-file = {:?}\n",
                    dir.join("certs").display().to_string(),
                    users.display().to_string()
                ),
                _ => "\n[security]\ninsecure = true\n".to_string(),
            };
            let config = format!(
                "# Written by `presage playground`.\nnode-id = {i}\nregion = \"r{}\"\ndata-dir = {:?}\nbootstrap = {}\n\
                 join = {:?}\nnative-listen = \"{}\"\nraft-listen = \"{}\"\nresp-listen = \"{}\"\nadmin-listen = \"{}\"\n\
                 fault-injection = true\ncapacity-bytes = \"10GiB\"\n\n[rocksdb]\nblock-cache-bytes = \"32MiB\"\n\
                 write-buffer-bytes = \"16MiB\"\n{}",
                (i - 1) % opts.regions + 1,
                dir.join("data").display().to_string(),
                i == 1,
                join,
                addr(i, 0),
                addr(i, 1),
                addr(i, 2),
                addr(i, 3),
                security_toml,
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
        let access = security.admin_access().map_err(|e| PlaygroundError::Invalid(e.to_string()))?;
        let cluster = ClusterFile { nodes, security };
        let mut pg = Playground { cluster, children, binary: opts.binary.clone(), access };
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
            match ready(&self.cluster, n, rf).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Err(PlaygroundError::NotReady(format!("not ready within {timeout:?}: {last}")))
    }

    /// Node `id`'s admin API.
    pub fn admin(&self, id: u64) -> Option<presage_ctl::AdminEndpoint> {
        let n = self.cluster.nodes.iter().find(|n| n.id == id)?;
        Some(presage_ctl::AdminEndpoint { addr: n.admin.clone(), access: self.access.clone() })
    }

    /// Every node's admin API but `except`'s, by node id.
    pub fn admins(&self, except: Option<u64>) -> Vec<(u64, presage_ctl::AdminEndpoint)> {
        let nodes = self.cluster.nodes.iter().filter(|n| Some(n.id) != except);
        nodes
            .map(|n| (n.id, presage_ctl::AdminEndpoint { addr: n.admin.clone(), access: self.access.clone() }))
            .collect()
    }

    /// A client configuration for this cluster (TLS and the read-write user's login).
    pub fn client_config(&self) -> ClientConfig {
        self.cluster.security.client_config()
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
        self.restart_with_env(id, overrides, &[])
    }

    /// [`Playground::restart`], with extra environment variables for the node's process
    /// (the crash tests' `PRESAGE_CRASH_AT`).
    pub fn restart_with_env(
        &mut self,
        id: u64,
        overrides: &[String],
        env: &[(&str, &str)],
    ) -> Result<(), PlaygroundError> {
        let i = self
            .cluster
            .nodes
            .iter()
            .position(|n| n.id == id)
            .ok_or_else(|| PlaygroundError::Invalid(format!("no node {id}")))?;
        let child = spawn_node_with_env(&self.binary, &self.cluster.nodes[i].config, overrides, env)?;
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

/// Makes the playground's CA, node and client certificates and users file under `dir`.
fn make_security(dir: &Path, nodes: u64) -> Result<SecurityInfo, PlaygroundError> {
    let certs = dir.join("certs");
    let ca_key = certs.join(cert::CA_KEY_FILE);
    cert::create_ca(&certs, &ca_key, true)?;
    for i in 1..=nodes {
        let node_certs = dir.join(format!("node-{i}")).join("certs");
        cert::copy_ca(&certs, &node_certs, true)?;
        let hosts = ["127.0.0.1".to_string(), "localhost".to_string()];
        // A node's certificate is signed by the CA in `certs`, written beside its own copy.
        cert::create_node(&certs, &ca_key, i, &hosts, true)?;
        for name in [cert::NODE_CERT_FILE, cert::NODE_KEY_FILE] {
            std::fs::rename(certs.join(name), node_certs.join(name)).map_err(io(format!("moving {name}")))?;
        }
    }
    let user = "app";
    cert::create_client(&certs, &ca_key, user, true)?;
    let secret = || {
        let bytes: [u8; 16] = rand::random();
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let (password, reader_password) = (secret(), secret());
    let users_file = dir.join("users.toml");
    let mut users = UsersFile::default();
    users.set_user(user, presage_client::proto::Role::ReadWrite, &password)?;
    // The application's user may send critical requests (its default priority is critical:
    // the overload scenario and the tests of admission by priority use it).
    users.set_priority(user, presage_client::Priority::Critical)?;
    users.set_user("reader", presage_client::proto::Role::ReadOnly, &reader_password)?;
    let token = users.new_token("operator", presage_client::proto::Role::Operator)?;
    users.write(&users_file)?;
    Ok(SecurityInfo {
        insecure: false,
        ca_cert: Some(certs.join(cert::CA_CERT_FILE)),
        client_cert: Some(certs.join(cert::client_cert_file(user))),
        client_key: Some(certs.join(cert::client_key_file(user))),
        resp_user: Some(user.into()),
        resp_password: Some(password),
        admin_token: Some(token),
        read_only_user: Some("reader".into()),
        read_only_password: Some(reader_password),
        users_file: Some(users_file),
    })
}

/// Starts `presage start --config CONFIG`, its output appended to `node.log` beside it.
pub fn spawn_node(binary: &Path, config: &Path, overrides: &[String]) -> Result<Child, PlaygroundError> {
    spawn_node_with_env(binary, config, overrides, &[])
}

/// [`spawn_node`] with extra environment variables.
pub fn spawn_node_with_env(
    binary: &Path,
    config: &Path,
    overrides: &[String],
    env: &[(&str, &str)],
) -> Result<Child, PlaygroundError> {
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
    cmd.envs(env.iter().copied());
    cmd.stdin(Stdio::null()).stdout(log).stderr(err);
    cmd.spawn().map_err(io(format!("starting {}", binary.display())))
}

/// Sends SIGTERM to `pid`.
pub fn terminate(pid: u32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
}

/// Has `cluster` got `nodes` Up nodes, a working write and read, and every shard replicated
/// `rf` times?
pub async fn ready(cluster: &ClusterFile, nodes: usize, rf: usize) -> Result<(), String> {
    let cfg = ClientConfig { request_timeout_ms: 2_000, ..cluster.security.client_config() };
    let client = Client::connect(&cluster.native_addrs(), cfg).await.map_err(|e| e.to_string())?;
    let access = cluster.security.admin_access().map_err(|e| e.to_string())?;
    let admin = cluster.nodes.first().map(|n| n.admin.clone()).unwrap_or_default();
    let info = tokio::task::spawn_blocking(move || presage_ctl::AdminClient::new(&admin, &access).cluster_once())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let up = info.nodes.iter().filter(|n| n.state == presage_shardmgr::NodeState::Up).count();
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
