//! The `presage-ctl` program: inspect and steer a Presage cluster through any node's admin
//! API (its binary, in `tools/src/bin`, only calls [`main`]).

use std::process::ExitCode;

use crate::{self as ctl, AdminClient, CtlError};
use clap::{Parser, Subcommand};
use presage_shardmgr::AdminCommand;

#[derive(Parser)]
#[command(name = "presage-ctl", version, about = "Inspect and steer a Presage cluster")]
struct Cli {
    /// A node's admin API (`host:port`).
    #[arg(long, env = "PRESAGE_ADMIN", default_value = "127.0.0.1:7480", global = true)]
    admin: String,
    /// The admin API's bearer token (`presage user token`; a playground's is in cluster.json).
    #[arg(long, env = "PRESAGE_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// The cluster CA's certificate: talk HTTPS and trust it (plain HTTP without it, to an
    /// insecure cluster only).
    #[arg(long, env = "PRESAGE_CA_CERT", global = true)]
    ca_cert: Option<std::path::PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Known events: maintenance windows of a node or region, load spikes on a key range
    /// (declared ahead so the cluster prepares before them).
    Events {
        #[command(subcommand)]
        what: crate::events_cli::EventsCommand,
    },
    /// Predicted load: each region's and node's forecast and load prediction score, the
    /// hottest shards' forecasts, and what the forecasts advise (splits, leadership moves).
    Forecast {
        /// Shards to list, hottest forecast first.
        #[arg(long, default_value_t = 20)]
        top: u32,
    },
    /// Capacity advice: per region and node, bytes and request load now, their growth, where
    /// they will be at the horizon, the date each crosses its capacity, nodes to add where.
    Capacity,
    /// Every node: state, region, group, disk use, replicas, leaders, last heartbeat,
    /// addresses.
    Nodes,
    /// Every replication group and its nodes.
    Groups,
    /// Shards: range, epoch, replicas, leader, size, load.
    Shards {
        /// Only shards with a replica on this node.
        #[arg(long)]
        node: Option<u64>,
        /// Only shards of this group.
        #[arg(long)]
        group: Option<u64>,
        /// Only the shard holding this key (text, `\\xNN` escapes, or `0x` and hex digits).
        #[arg(long)]
        key: Option<String>,
        /// Only the N hottest (by `--by`), hottest first.
        #[arg(long)]
        top: Option<usize>,
        /// What `--top` ranks by.
        #[arg(long, value_enum, default_value = "bytes", requires = "top")]
        by: HotByArg,
    },
    /// One shard.
    Shard {
        #[command(subcommand)]
        what: ShardCommand,
    },
    /// Split a shard at KEY (or at its middle key).
    Split {
        /// The shard.
        id: u64,
        /// The first key of the right half (text, `\\xNN` escapes, or `0x` and hex digits).
        key: Option<String>,
    },
    /// Merge a shard's right neighbour into it.
    Merge {
        /// The left shard.
        id: u64,
    },
    /// Move a shard off a node to a node of another group (the shard changes group).
    Move {
        /// The shard.
        id: u64,
        /// A node holding a replica.
        #[arg(long)]
        from: u64,
        /// The node to move to.
        #[arg(long)]
        to: u64,
    },
    /// Make a node the shard's leader.
    TransferLeader {
        /// The shard.
        id: u64,
        /// A node holding a voter.
        #[arg(long)]
        to: u64,
    },
    /// Mark a node Draining and move its leaderships away.
    Drain {
        /// The node.
        node: u64,
    },
    /// Decommission a node for good: its replicas move to a spare node that takes its
    /// place (as `evacuate`), then it is Removed (stop its process then).
    Decommission {
        /// The node.
        node: u64,
    },
    /// Return a Draining node to service (the undo of `drain`).
    Recommission {
        /// The node.
        node: u64,
    },
    /// Operators, running and recently finished.
    Operators,
    /// Cancel a running operator: it rolls back if it can (a merge), else stops.
    CancelOperator {
        /// The operator (`presage-ctl operators`).
        id: u64,
    },
    /// Load-driven scheduling (splits, merges, balancing): show, pause during an incident,
    /// resume. Safety moves (evacuations, failing disks, lost replicas) are never paused.
    Scheduler {
        #[command(subcommand)]
        what: SchedulerCommand,
    },
    /// Move a shard's replicas to the replication group of node NODE: each is copied
    /// (snapshot + log tail), verified by range checksum and swapped in by joint consensus.
    Migrate {
        /// The shard.
        id: u64,
        /// A node of another group.
        #[arg(long)]
        to: u64,
    },
    /// Evacuate a node now: a healthy spare node takes its place in its group and every
    /// replica moves there (copied, verified, swapped in); the node is then held out.
    Evacuate {
        /// The node.
        node: u64,
    },
    /// End a node's evacuation by hand: an evacuated node is released (it may serve as a
    /// spare again), a preparing one stands down; a cut-over in progress is not interrupted.
    Release {
        /// The node.
        node: u64,
    },
    /// Node evacuations (proactive, reactive, manual): stage, target, shards and bytes
    /// left, copy rate and ETA, the steps running.
    Migrations,
    /// Gradual shifts of risky ranges' leaderships off their nodes: the weight shifted so far
    /// and the leaderships moved (each range's risk: `shards --top N --by risk`).
    Shifts,
    /// Failure probability per node and per region, and the models behind it.
    Risk,
    /// Active early warnings with their evidence; `--follow` prints new ones as they come.
    Warnings {
        /// Keep printing warning events as they are raised and cleared (Ctrl-C ends).
        #[arg(long)]
        follow: bool,
    },
    /// A node's per-minute telemetry history kept in the meta shard (mean/max per minute).
    History {
        /// The node.
        node: u64,
        /// How far back.
        #[arg(long, default_value_t = 60)]
        minutes: u32,
    },
    /// Push counters for a node, e.g. SMART attributes of its disk: `smart_5_raw=8`.
    Counters {
        /// The node.
        node: u64,
        /// `name=value` pairs.
        #[arg(required = true)]
        values: Vec<String>,
    },
    /// Failure model: train and evaluate on drive SMART data (local files, no cluster).
    Pfa {
        #[command(subcommand)]
        what: PfaCommand,
    },
    /// Engine faults (with `--network`, faults on its outgoing Raft links; with `--host`, CPU
    /// contention and memory pressure) on the node whose admin API this talks to (a node started with `fault-injection = true`; operators
    /// only): show, set or clear them.
    Faults {
        /// The network faults: `{"delay-ms": 50, "loss-rate": 0.1, "bandwidth-bytes-per-sec":
        /// 1048576}`.
        #[arg(long, conflicts_with = "host")]
        network: bool,
        /// CPU contention and memory pressure in the node: `{"cpu-threads": 2, "memory-bytes":
        /// 1073741824, "duration-ms": 10000}`.
        #[arg(long)]
        host: bool,
        #[command(subcommand)]
        what: FaultsCommand,
    },
    /// The log filter of the node whose admin API this talks to (`RUST_LOG` syntax, e.g.
    /// `info,presage_replication=debug`): shown, or replaced until the node restarts
    /// (operators only).
    LogLevel {
        /// The new filter; without it, the one in force is shown.
        filter: Option<String>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum HotByArg {
    /// Reads per second.
    Reads,
    /// Writes per second.
    Writes,
    /// Bytes read and written per second.
    Bytes,
    /// Size on disk.
    Size,
    /// Risk from the replicas' nodes, p99 and errors.
    Risk,
}

#[derive(Subcommand)]
enum SchedulerCommand {
    /// Whether it runs.
    Status,
    /// Pause it (kept across shard manager fail-overs) until resumed.
    Pause,
    /// Resume it.
    Resume,
}

#[derive(Subcommand)]
enum FaultsCommand {
    /// The faults in force.
    Show,
    /// Replace the faults, e.g. `{"sync": {"stall-ms": 5000}}`, `{"disk-full": true}`,
    /// `{"write": {"latency-start-us": 20000, "latency-end-us": 20000, "slow-rate": 0.1}}`;
    /// ramps and stalls start now.
    Set {
        /// The fault configuration as JSON (the admin API's `PUT /v1/faults` body).
        config: String,
    },
    /// Remove every fault.
    Clear,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DataFormat {
    /// Backblaze Drive Stats CSV (date, serial_number, failure, smart_N_raw...): a drive model.
    Backblaze,
    /// Telemetry recorded by `presage pfa-record` (at_ms, node, signals, failure_at_ms): a node
    /// model.
    Telemetry,
}

#[derive(Subcommand)]
enum PfaCommand {
    /// Train a drive failure model; a share of the drives is held out for `pfa eval`.
    Train {
        /// The data's format.
        #[arg(long, value_enum, default_value = "backblaze")]
        format: DataFormat,
        /// A data file; repeat for several (their SMART columns are united).
        #[arg(long = "csv", required = true)]
        csv: Vec<std::path::PathBuf>,
        /// Predict failure within this many days (backblaze).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=365))]
        horizon_days: u32,
        /// Predict failure within this many seconds (telemetry).
        #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        horizon_secs: u64,
        /// Share of drives held out for evaluation, split by drive.
        #[arg(long, default_value_t = 0.3)]
        test_fraction: f64,
        /// Seed of training's random choices.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Where to write the model.
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Failure-history priors (failure rate by failures in the last 30 days) from LANL
    /// failure records.
    Prior {
        /// The LANL failure file.
        #[arg(long)]
        lanl: std::path::PathBuf,
        /// Where to write the priors (JSON).
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// The feedback loop on a running cluster: per day, early warnings that preceded their
    /// node's failure within the horizon and false ones, mitigations that helped and did not;
    /// then each warning and mitigation, and each kind's eagerness now.
    Report {
        /// A warning followed by its node's failure within this long preceded it (e.g. 1h, 1d).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        horizon: std::time::Duration,
    },
    /// Evaluate a model on a data file's unseen drives, beside the Backblaze rule.
    Eval {
        /// The model file.
        #[arg(long)]
        model: std::path::PathBuf,
        /// The data file.
        #[arg(long)]
        csv: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
enum ShardCommand {
    /// Show one shard.
    Show {
        /// The shard.
        id: u64,
    },
    /// Checksum every replica of a shard at one log index and compare them.
    Verify {
        /// The shard.
        id: u64,
    },
}

fn run(cli: Cli) -> Result<String, CtlError> {
    let access = ctl::AdminAccess::load(cli.ca_cert.as_deref(), cli.token.clone())?;
    let c = AdminClient::new(&cli.admin, &access);
    let json = cli.json;
    let pretty = |v: &dyn erased::Json| v.pretty();
    let admin = |cmd: AdminCommand| -> Result<String, CtlError> {
        let outcome = c.admin(&cmd)?;
        Ok(if json { pretty(&outcome) } else { format!("{}\n", outcome.message) })
    };
    match cli.command {
        Command::Events { what } => match crate::events_cli::command(what)? {
            Some(cmd) => admin(cmd),
            None => {
                let info = c.cluster()?;
                Ok(if json { pretty(&info.events) } else { crate::events_cli::table(&info.events) })
            }
        },
        Command::Forecast { top } => {
            let report: presage_shardmgr::ForecastReport = c.get(&format!("/v1/forecast?top={top}"))?;
            Ok(if json { pretty(&report) } else { crate::forecast_cli::text(&report) })
        }
        Command::Capacity => {
            let report: presage_shardmgr::CapacityReport = c.get("/v1/capacity")?;
            Ok(if json { pretty(&report) } else { crate::capacity_cli::text(&report) })
        }
        Command::Nodes => {
            let info = c.cluster()?;
            Ok(if json { pretty(&ctl::nodes_json(&info)) } else { ctl::nodes_table(&info) })
        }
        Command::Groups => {
            let info = c.cluster()?;
            Ok(if json { pretty(&info.groups) } else { ctl::groups_table(&info) })
        }
        Command::Shards { node, group, key, top, by } => {
            let key = key.as_deref().map(ctl::parse_key).transpose()?;
            let mut rows = c.shards(node, group, key.as_deref())?;
            if let Some(n) = top {
                let by = match by {
                    HotByArg::Reads => ctl::HotBy::Reads,
                    HotByArg::Writes => ctl::HotBy::Writes,
                    HotByArg::Bytes => ctl::HotBy::Bytes,
                    HotByArg::Size => ctl::HotBy::Size,
                    HotByArg::Risk => ctl::HotBy::Risk,
                };
                rows = ctl::hottest(rows, by, n);
            }
            Ok(if json { pretty(&rows) } else { ctl::shards_table(&rows) })
        }
        Command::Shard { what: ShardCommand::Verify { id } } => {
            let v: serde_json::Value = c.get(&format!("/v1/shards/{id}/checksums"))?;
            if json {
                return Ok(pretty(&v));
            }
            let rows: Vec<Vec<String>> = v["replicas"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| vec![r["node"].to_string(), r["checksum"].as_str().unwrap_or("?").to_string()])
                .collect();
            let verdict = if v["equal"] == true { "equal" } else { "DIFFERENT" };
            Ok(format!("shard {id} at index {}: {verdict}\n{}", v["index"], ctl::table(&["NODE", "CHECKSUM"], &rows)))
        }
        Command::Shard { what: ShardCommand::Show { id } } => {
            let row: presage_client::proto::ShardRow = c.get(&format!("/v1/shards/{id}"))?;
            Ok(if json { pretty(&row) } else { ctl::shards_table(std::slice::from_ref(&row)) })
        }
        Command::Split { id, key } => {
            let key = key.as_deref().map(ctl::parse_key).transpose()?;
            admin(AdminCommand::Split { shard: id, key })
        }
        Command::Merge { id } => admin(AdminCommand::Merge { shard: id }),
        Command::Move { id, from, to } => admin(AdminCommand::Move { shard: id, from, to }),
        Command::TransferLeader { id, to } => admin(AdminCommand::TransferLeader { shard: id, to }),
        Command::Drain { node } => admin(AdminCommand::Drain { node }),
        Command::Migrate { id, to } => admin(AdminCommand::Migrate { shard: id, to }),
        Command::Evacuate { node } => admin(AdminCommand::Evacuate { node }),
        Command::Release { node } => admin(AdminCommand::Release { node }),
        Command::Migrations => {
            let info = c.cluster()?;
            Ok(if json { pretty(&info.migrations) } else { ctl::migrations_table(&info.migrations) })
        }
        Command::Shifts => {
            let info = c.cluster()?;
            Ok(if json { pretty(&info.shifts) } else { ctl::shifts_cli::table(&info.shifts) })
        }
        Command::Faults { network, host, what } => {
            let path = match (network, host) {
                (true, _) => "/v1/faults/network",
                (_, true) => "/v1/faults/host",
                _ => "/v1/faults",
            };
            match what {
                FaultsCommand::Show => Ok(c.get_raw(path)? + "\n"),
                FaultsCommand::Set { config } => {
                    let body: serde_json::Value = serde_json::from_str(&config)
                        .map_err(|e| CtlError::Decode(format!("the fault configuration is not JSON: {e}")))?;
                    c.put_raw(path, &body)?;
                    // With --json, the faults now in force.
                    Ok(if json { c.get_raw(path)? + "\n" } else { "faults set\n".into() })
                }
                FaultsCommand::Clear => {
                    c.delete(path)?;
                    Ok(if json { c.get_raw(path)? + "\n" } else { "faults cleared\n".into() })
                }
            }
        }
        Command::LogLevel { filter } => {
            let answer: serde_json::Value = match filter {
                None => c.get("/v1/log-level")?,
                Some(f) => {
                    let text = c.put_raw("/v1/log-level", &serde_json::json!({ "filter": f }))?;
                    serde_json::from_str(&text).map_err(|e| CtlError::Decode(format!("log-level answer: {e}")))?
                }
            };
            Ok(if json { pretty(&answer) } else { format!("{}\n", answer["filter"].as_str().unwrap_or_default()) })
        }
        Command::Risk => {
            let text = c.get_raw("/v1/risk")?;
            if json {
                return Ok(text + "\n");
            }
            let report = serde_json::from_str(&text).map_err(|e| CtlError::Decode(e.to_string()))?;
            Ok(ctl::risk_text(&report))
        }
        Command::Warnings { follow: false } => {
            let text = c.get_raw("/v1/warnings?after=0&limit=0")?;
            if json {
                return Ok(text + "\n");
            }
            let answer = serde_json::from_str(&text).map_err(|e| CtlError::Decode(e.to_string()))?;
            Ok(ctl::warnings_text(&answer))
        }
        Command::Warnings { follow: true } => {
            let first: presage_pfa::warning::WarningsAnswer = c.get("/v1/warnings?after=0&limit=0")?;
            print!("{}", ctl::warnings_text(&first));
            let mut after = first.next_seq.saturating_sub(1);
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                let a: presage_pfa::warning::WarningsAnswer =
                    c.get(&format!("/v1/warnings?after={after}&limit=1000"))?;
                for e in &a.events {
                    if json {
                        println!("{}", serde_json::to_string(e).unwrap_or_default());
                    } else {
                        print!("{}", ctl::warning_event_line(e));
                    }
                    after = e.seq;
                }
            }
        }
        Command::History { node, minutes } => {
            let text = c.get_raw(&format!("/v1/history/{node}?minutes={minutes}"))?;
            if json {
                return Ok(text + "\n");
            }
            let minutes = serde_json::from_str::<Vec<_>>(&text).map_err(|e| CtlError::Decode(e.to_string()))?;
            Ok(ctl::history_text(&minutes))
        }
        Command::Counters { node, values } => {
            let mut map = serde_json::Map::new();
            for v in &values {
                let (k, x) = v
                    .split_once('=')
                    .and_then(|(k, x)| x.trim().parse::<f64>().ok().map(|x| (k.trim(), x)))
                    .ok_or_else(|| CtlError::Decode(format!("`{v}` is not name=number")))?;
                map.insert(k.to_string(), serde_json::json!(x));
            }
            let text = c.put_raw(&format!("/v1/nodes/{node}/counters"), &serde_json::Value::Object(map))?;
            Ok(text + "\n")
        }
        Command::Pfa {
            what: PfaCommand::Train { format, csv, horizon_days, horizon_secs, test_fraction, seed, out },
        } => match format {
            DataFormat::Backblaze => {
                let mut cfg = presage_pfa::disk::DiskTrainConfig { horizon_days, test_fraction, ..Default::default() };
                cfg.params.seed = seed;
                crate::pfa_cli::train(&csv, &cfg, &out, json)
            }
            DataFormat::Telemetry => {
                let mut cfg = presage_pfa::node_model::NodeTrainConfig { horizon_secs, ..Default::default() };
                cfg.train_fraction = 1.0 - test_fraction - cfg.validation_fraction;
                cfg.params.seed = seed;
                crate::pfa_cli::train_node(&csv, &cfg, &out, json)
            }
        },
        Command::Pfa { what: PfaCommand::Prior { lanl, out } } => crate::pfa_cli::prior(&lanl, &out, json),
        Command::Pfa { what: PfaCommand::Eval { model, csv } } => crate::pfa_cli::eval(&model, &csv, json),
        Command::Pfa { what: PfaCommand::Report { horizon } } => {
            let report: presage_shardmgr::PfaReport =
                c.get(&format!("/v1/pfa/report?horizon_ms={}", horizon.as_millis()))?;
            Ok(if json { pretty(&report) } else { crate::pfa_cli::report_text(&report) })
        }
        Command::Decommission { node } => admin(AdminCommand::Decommission { node }),
        Command::Recommission { node } => admin(AdminCommand::Recommission { node }),
        Command::CancelOperator { id } => admin(AdminCommand::CancelOperator { id }),
        Command::Scheduler { what: SchedulerCommand::Pause } => admin(AdminCommand::PauseScheduler),
        Command::Scheduler { what: SchedulerCommand::Resume } => admin(AdminCommand::ResumeScheduler),
        Command::Scheduler { what: SchedulerCommand::Status } => {
            let paused = c.cluster()?.stats.scheduler_paused;
            Ok(if json {
                pretty(&serde_json::json!({ "paused": paused }))
            } else {
                format!("load-driven scheduling is {}\n", if paused { "paused" } else { "running" })
            })
        }
        Command::Operators => {
            let info = c.cluster()?;
            Ok(if json { pretty(&info.operators) } else { ctl::operators_table(&info.operators) })
        }
    }
}

mod erased {
    /// Anything printable as pretty JSON.
    pub trait Json {
        fn pretty(&self) -> String;
    }

    impl<T: serde::Serialize> Json for T {
        fn pretty(&self) -> String {
            serde_json::to_string_pretty(self).map(|s| s + "\n").unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}\n"))
        }
    }
}

/// Runs `presage-ctl` with the process's arguments.
pub fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("presage-ctl: {e}");
            ExitCode::FAILURE
        }
    }
}
