//! `presage`: the Presage node program.
//!
//! - `presage start --config node.toml [flags]`: run a node (flags override the file).
//! - `presage playground --nodes N --regions R --data-dir DIR`: a local cluster of node
//!   processes.
//! - `presage config-defaults`: every setting with its default, as TOML.
//! - `presage cert create-ca | create-node | create-client`: certificates of a secure cluster.
//! - `presage user add | token`: users (RESP and native logins) and admin API tokens.
//! - `presage demo`: a local cluster at work: load, a zipfian workload, a load split and
//!   rebalancing as they happen (what `make demo` runs).
//! - `presage walkthrough`: the storage engine step by step in a temporary folder.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use presage_playground::{Playground, PlaygroundOptions};
use presage_server::admin::LogLevelControl;
use presage_server::metrics::Metrics;
use presage_server::node::config::{LogFormat, NodeConfig};
use presage_server::node::RunningNode;
use presage_tools::demo::{self, DemoOptions};
use presage_tools::walkthrough::{self, WalkthroughOptions};

#[derive(Parser)]
#[command(name = "presage", version, about = "Presage: a replicated key-value database that sees failures coming")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Start(Box<StartArgs>),
    /// Start a local cluster of node processes on loopback; runs until interrupted.
    Playground {
        /// Nodes to start.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Regions to spread them over.
        #[arg(long, default_value_t = 3)]
        regions: u64,
        /// Where the nodes' configuration, data and logs go (DIR/cluster.json describes them).
        #[arg(long)]
        data_dir: PathBuf,
        /// A setting for every node, `key.path=value` (repeatable).
        #[arg(long = "set")]
        set: Vec<String>,
        /// Give up if the cluster does not serve within this many seconds.
        #[arg(long, default_value_t = 120)]
        ready_timeout_secs: u64,
        /// Development only: no TLS, no users, no tokens.
        #[arg(long)]
        insecure: bool,
    },
    /// Print every node setting with its default value (TOML).
    ConfigDefaults,
    /// Make the certificates of a secure cluster: a CA, node and client certificates.
    Cert {
        #[command(subcommand)]
        what: CertCommand,
    },
    /// Add users (RESP and native logins) and admin API tokens to a users file.
    User {
        #[command(subcommand)]
        what: UserCommand,
    },
    /// A local cluster at work: start a playground, load data, run a zipfian workload with a
    /// progress bar, show the load split and rebalancing as they happen, summarise, stop.
    Demo(Box<DemoArgs>),
    /// Walk through the storage engine in a temporary folder: write, scan, snapshot, export,
    /// a corrupted chunk refused, import, verify.
    Walkthrough {
        /// Keys to write (at least 1000).
        #[arg(long, default_value_t = WalkthroughOptions::default().keys)]
        keys: u64,
        /// Bytes per value.
        #[arg(long, default_value_t = WalkthroughOptions::default().value_bytes)]
        value_bytes: usize,
    },
    /// Record labelled telemetry for the node failure model: a playground under a workload,
    /// faults injected on a seeded schedule (disks slowing until they fail, escalating errors,
    /// harmless spikes), the agents' samples written to a CSV with each node's next failure.
    PfaRecord(Box<PfaRecordArgs>),
}

/// Where `presage cert` finds the CA and writes.
#[derive(Args)]
struct CertDir {
    /// Holds ca.crt (created by create-ca); the new files go here.
    #[arg(long)]
    certs_dir: PathBuf,
    /// The CA's key (default CERTS_DIR/ca.key; keep it off the nodes in production).
    #[arg(long)]
    ca_key: Option<PathBuf>,
    /// Replace existing files.
    #[arg(long)]
    overwrite: bool,
}

impl CertDir {
    fn ca_key(&self) -> PathBuf {
        self.ca_key.clone().unwrap_or_else(|| self.certs_dir.join(presage_security::cert::CA_KEY_FILE))
    }
}

/// `presage cert ...` (the subcommands are named as `cockroach cert` names them).
#[derive(Subcommand)]
#[allow(clippy::enum_variant_names)]
enum CertCommand {
    /// A new cluster CA: CERTS_DIR/ca.crt and its key.
    CreateCa {
        #[command(flatten)]
        dir: CertDir,
    },
    /// A node's certificate, CERTS_DIR/node.{crt,key}: its id and every host it is dialled by.
    CreateNode {
        /// The node's id.
        #[arg(long)]
        node_id: u64,
        /// An IP address or DNS name of the node (repeatable; at least one).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        #[command(flatten)]
        dir: CertDir,
    },
    /// A user's client certificate, CERTS_DIR/client.USER.{crt,key}.
    CreateClient {
        /// The user (listed in the users file for a role).
        user: String,
        #[command(flatten)]
        dir: CertDir,
    },
}

/// `presage user ...`.
#[derive(Subcommand)]
enum UserCommand {
    /// Add (or replace) a user with a role and password.
    Add {
        /// The user.
        name: String,
        /// read-only, read-write or operator.
        #[arg(long)]
        role: String,
        /// The password (or the environment variable PRESAGE_PASSWORD).
        #[arg(long, env = "PRESAGE_PASSWORD", hide_env_values = true)]
        password: String,
        /// The priority of its RESP requests unless a connection sets another: critical,
        /// normal or bulk (an overloaded node sheds bulk first).
        #[arg(long, default_value = "normal")]
        priority: presage_client::Priority,
        /// The users file.
        #[arg(long)]
        users_file: PathBuf,
    },
    /// Make a new admin API token with a role and print it (stored only as its digest).
    Token {
        /// A name for the token (logs).
        name: String,
        /// read-only (inspection) or operator.
        #[arg(long)]
        role: String,
        /// The users file.
        #[arg(long)]
        users_file: PathBuf,
    },
}

/// `presage pfa-record`.
#[derive(Args)]
struct PfaRecordArgs {
    /// The CSV to write.
    #[arg(long)]
    out: PathBuf,
    /// Recording length after the warm-up, seconds.
    #[arg(long, default_value_t = 900)]
    secs: u64,
    /// Fault-free warm-up, seconds.
    #[arg(long, default_value_t = 150)]
    warmup_secs: u64,
    /// Record a healthy cluster (no faults): for false-alarm rates.
    #[arg(long)]
    healthy: bool,
    /// Nodes (at least 3).
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Regions.
    #[arg(long, default_value_t = 3)]
    regions: u64,
    /// Client operations per second.
    #[arg(long, default_value_t = 200)]
    ops_per_sec: u32,
    /// Seed of the fault schedule and the workload.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the nodes live (default: a temporary folder).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// `presage demo`.
#[derive(Args)]
struct DemoArgs {
    /// Node processes.
    #[arg(long, default_value_t = DemoOptions::default().nodes)]
    nodes: u64,
    /// Regions to spread them over.
    #[arg(long, default_value_t = DemoOptions::default().regions)]
    regions: u64,
    /// Keys to load.
    #[arg(long, default_value_t = DemoOptions::default().keys)]
    keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = DemoOptions::default().value_bytes)]
    value_bytes: usize,
    /// How long the workload runs, in seconds.
    #[arg(long, default_value_t = DemoOptions::default().workload_secs)]
    seconds: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = DemoOptions::default().workers)]
    workers: usize,
    /// Share of reads, in percent.
    #[arg(long, default_value_t = DemoOptions::default().read_percent)]
    read_percent: u32,
    /// Zipf exponent of key popularity.
    #[arg(long, default_value_t = DemoOptions::default().zipf_exponent)]
    zipf: f64,
    /// The nodes' load-split threshold, in requests per second.
    #[arg(long, default_value_t = DemoOptions::default().split_qps)]
    split_qps: u64,
    /// Keep the nodes' data here (default: a temporary folder, removed after).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Seed of the workload.
    #[arg(long, default_value_t = DemoOptions::default().seed)]
    seed: u64,
    /// The second act (a failing disk): seconds its disk takes to slow to 1 s per write
    /// before the node is killed; 0 skips the act.
    #[arg(long, default_value_t = DemoOptions::default().failing_node_ramp_secs)]
    failing_node_ramp_secs: u64,
}

/// `presage start`: each flag overrides the key of the same name in the file.
#[derive(Args)]
struct StartArgs {
    /// The configuration file (TOML).
    #[arg(long)]
    config: Option<PathBuf>,
    /// `node-id`.
    #[arg(long)]
    node_id: Option<u64>,
    /// `region`.
    #[arg(long)]
    region: Option<String>,
    /// `data-dir`.
    #[arg(long)]
    data_dir: Option<String>,
    /// `capacity-bytes` (a number or a size such as `100GiB`).
    #[arg(long)]
    capacity_bytes: Option<String>,
    /// `bootstrap`: start a new cluster if the data dir is empty.
    #[arg(long)]
    bootstrap: bool,
    /// `join`: peer addresses of nodes to join through (comma-separated).
    #[arg(long, value_delimiter = ',')]
    join: Vec<String>,
    /// `native-listen`.
    #[arg(long)]
    native_listen: Option<String>,
    /// `native-advertise`.
    #[arg(long)]
    native_advertise: Option<String>,
    /// `raft-listen`.
    #[arg(long)]
    raft_listen: Option<String>,
    /// `raft-advertise`.
    #[arg(long)]
    raft_advertise: Option<String>,
    /// `resp-listen` (empty: no RESP).
    #[arg(long)]
    resp_listen: Option<String>,
    /// `admin-listen` (empty: no admin API).
    #[arg(long)]
    admin_listen: Option<String>,
    /// `security.insecure`: development only, no TLS and no credentials.
    #[arg(long)]
    insecure: bool,
    /// `security.certs-dir`.
    #[arg(long)]
    certs_dir: Option<String>,
    /// `security.users-file`.
    #[arg(long)]
    users_file: Option<String>,
    /// `fault-injection`.
    #[arg(long)]
    fault_injection: bool,
    /// `log`.
    #[arg(long)]
    log: Option<String>,
    /// Any setting, `key.path=value` (repeatable), e.g. `--set raft.election-ticks=20`.
    #[arg(long = "set")]
    set: Vec<String>,
}

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

impl StartArgs {
    fn overrides(&self) -> Vec<String> {
        let mut out = Vec::new();
        let strings = [
            ("region", &self.region),
            ("data-dir", &self.data_dir),
            ("native-listen", &self.native_listen),
            ("native-advertise", &self.native_advertise),
            ("raft-listen", &self.raft_listen),
            ("raft-advertise", &self.raft_advertise),
            ("resp-listen", &self.resp_listen),
            ("admin-listen", &self.admin_listen),
            ("security.certs-dir", &self.certs_dir),
            ("security.users-file", &self.users_file),
            ("log", &self.log),
            ("capacity-bytes", &self.capacity_bytes),
        ];
        for (key, v) in strings {
            if let Some(v) = v {
                out.push(format!("{key}={}", quoted(v)));
            }
        }
        if let Some(id) = self.node_id {
            out.push(format!("node-id={id}"));
        }
        if self.bootstrap {
            out.push("bootstrap=true".into());
        }
        if self.fault_injection {
            out.push("fault-injection=true".into());
        }
        if self.insecure {
            out.push("security.insecure=true".into());
        }
        if !self.join.is_empty() {
            let list: Vec<String> = self.join.iter().map(|j| quoted(j)).collect();
            out.push(format!("join=[{}]", list.join(",")));
        }
        out.extend(self.set.iter().cloned());
        out
    }
}

/// Installs the process's logger; returns the control of its filter (`None` when a logger
/// was installed already).
fn init_log(filter: &str, format: LogFormat) -> Option<LogLevelControl> {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{fmt, reload, EnvFilter};
    let initial = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let (filter_layer, handle) = reload::Layer::new(initial);
    let fmt_layer = match format {
        LogFormat::Text => fmt::layer().with_target(false).boxed(),
        LogFormat::Json => fmt::layer().json().with_target(false).boxed(),
    };
    tracing_subscriber::registry().with(filter_layer).with(fmt_layer).try_init().ok()?;
    Some(Arc::new(move |new: Option<&str>| {
        if let Some(text) = new {
            let filter = EnvFilter::try_new(text).map_err(|e| format!("bad log filter {text:?}: {e}"))?;
            handle.reload(filter).map_err(|e| format!("the log filter could not be replaced: {e}"))?;
            tracing::info!(filter = text, "log filter replaced");
        }
        handle.with_current(ToString::to_string).map_err(|e| format!("the log filter could not be read: {e}"))
    }))
}

/// Waits for SIGTERM or ctrl-c.
async fn interrupted() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn start(args: StartArgs) -> Result<()> {
    let loaded = NodeConfig::load(args.config.as_deref(), &args.overrides())?;
    let log_level = init_log(&loaded.config.log, loaded.config.log_format);
    for key in &loaded.unknown_keys {
        tracing::warn!(key, "unknown configuration key ignored");
    }
    #[cfg(feature = "failpoints")]
    crash_at_failpoints()?;
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async move {
        let node = RunningNode::start(loaded.config, Metrics::new(), log_level).await?;
        tracing::info!(native = %node.native_addr(), "node serving");
        let failed = tokio::select! {
            () = interrupted() => false,
            () = async {
                while !node.replication_stopped() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            } => true,
        };
        node.shutdown(Duration::from_secs(10)).await;
        if failed {
            // Fail-stop: the replication node stopped after an engine error (logged where it
            // happened); exit non-zero so that a supervisor restarts the process.
            bail!("the replication node stopped after an engine error; exiting so that a restart recovers");
        }
        Ok(())
    })
}

/// Crash tests only (built with the `failpoints` feature, never in a release):
/// `PRESAGE_CRASH_AT=name[,name...]` has this process killed (SIGKILL, as a crash) the first
/// time it reaches one of the named failpoints (`presage_replication`'s, e.g.
/// `apply_split_written`).
#[cfg(feature = "failpoints")]
fn crash_at_failpoints() -> Result<()> {
    let Ok(names) = std::env::var("PRESAGE_CRASH_AT") else { return Ok(()) };
    for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let at = name.to_string();
        fail::cfg_callback(name, move || {
            eprintln!("crashing at failpoint {at} (PRESAGE_CRASH_AT)");
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        })
        .map_err(|e| anyhow::anyhow!("PRESAGE_CRASH_AT: failpoint {name}: {e}"))?;
        tracing::warn!(failpoint = name, "this process kills itself at the failpoint (PRESAGE_CRASH_AT)");
    }
    Ok(())
}

fn playground(opts: PlaygroundOptions) -> Result<()> {
    let _ = init_log("info", LogFormat::Text);
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async move {
        let mut pg = Playground::start(&opts).await?;
        println!("{:<4} {:<8} {:<7} {:<22} {:<22} {:<22}", "id", "pid", "region", "native", "resp", "admin");
        for n in &pg.cluster.nodes {
            println!("{:<4} {:<8} {:<7} {:<22} {:<22} {:<22}", n.id, n.pid, n.region, n.native, n.resp, n.admin);
        }
        println!("cluster serving; {} written; ctrl-c stops it", opts.data_dir.join("cluster.json").display());
        interrupted().await;
        println!("stopping the nodes");
        tokio::task::spawn_blocking(move || pg.stop(Duration::from_secs(15))).await?;
        Ok(())
    })
}

fn cert(what: CertCommand) -> Result<()> {
    use presage_security::cert;
    match what {
        CertCommand::CreateCa { dir } => {
            cert::create_ca(&dir.certs_dir, &dir.ca_key(), dir.overwrite)?;
            println!("CA: {} (key {})", dir.certs_dir.join(cert::CA_CERT_FILE).display(), dir.ca_key().display());
        }
        CertCommand::CreateNode { node_id, hosts, dir } => {
            cert::create_node(&dir.certs_dir, &dir.ca_key(), node_id, &hosts, dir.overwrite)?;
            let path = dir.certs_dir.join(cert::NODE_CERT_FILE);
            println!("node {node_id}: {} for {}", path.display(), hosts.join(", "));
        }
        CertCommand::CreateClient { user, dir } => {
            cert::create_client(&dir.certs_dir, &dir.ca_key(), &user, dir.overwrite)?;
            println!("user {user}: {}", dir.certs_dir.join(cert::client_cert_file(&user)).display());
        }
    }
    Ok(())
}

fn user(what: UserCommand) -> Result<()> {
    use presage_security::credentials::UsersFile;
    let role = |r: &str| r.parse::<presage_client::proto::Role>().map_err(anyhow::Error::msg);
    match what {
        UserCommand::Add { name, role: r, password, priority, users_file } => {
            let mut file = UsersFile::read(&users_file)?;
            file.set_user(&name, role(&r)?, &password)?;
            file.set_priority(&name, priority)?;
            file.write(&users_file)?;
            println!("user {name} ({r}, {priority} priority) written to {}", users_file.display());
        }
        UserCommand::Token { name, role: r, users_file } => {
            let mut file = UsersFile::read(&users_file)?;
            let token = file.new_token(&name, role(&r)?)?;
            file.write(&users_file)?;
            eprintln!("token {name} ({r}) written to {} (shown once):", users_file.display());
            println!("{token}");
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Start(args) => start(*args),
        Command::Playground { nodes, regions, data_dir, set, ready_timeout_secs, insecure } => {
            let binary = std::env::current_exe().context("finding the presage binary")?;
            playground(PlaygroundOptions {
                nodes,
                regions,
                data_dir,
                overrides: set,
                binary,
                ready_timeout: Duration::from_secs(ready_timeout_secs),
                insecure,
            })
        }
        Command::ConfigDefaults => {
            print!("{}", NodeConfig::default().to_toml());
            Ok(())
        }
        Command::Cert { what } => cert(what),
        Command::User { what } => user(what),
        Command::Demo(a) => {
            let opts = DemoOptions {
                nodes: a.nodes,
                regions: a.regions,
                keys: a.keys,
                value_bytes: a.value_bytes,
                workload_secs: a.seconds,
                workers: a.workers,
                read_percent: a.read_percent,
                zipf_exponent: a.zipf,
                split_qps: a.split_qps,
                data_dir: a.data_dir,
                binary: std::env::current_exe().context("finding the presage binary")?,
                seed: a.seed,
                failing_node_ramp_secs: a.failing_node_ramp_secs,
            };
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            runtime.block_on(demo::run(&opts))
        }
        Command::PfaRecord(a) => {
            let opts = presage_bench::pfa_record::RecordOptions {
                nodes: a.nodes,
                regions: a.regions,
                secs: a.secs,
                warmup_secs: a.warmup_secs,
                faults: !a.healthy,
                ops_per_sec: a.ops_per_sec,
                seed: a.seed,
                out: a.out,
                data_dir: a.data_dir,
                binary: std::env::current_exe().context("finding the presage binary")?,
            };
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            let summary = runtime.block_on(presage_bench::pfa_record::run(&opts))?;
            println!("{summary}");
            Ok(())
        }
        Command::Walkthrough { keys, value_bytes } => {
            let mut out = std::io::stdout().lock();
            walkthrough::run(&WalkthroughOptions { keys, value_bytes }, &mut out)
        }
    }
}
