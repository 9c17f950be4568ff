//! `presage-ctl`: operators inspect and steer the cluster through any node's admin API.
//! Tables for people, `--json` for scripts (the admin API's JSON, unchanged).
//!
//! - this module: [`AdminClient`] (HTTPS with [`AdminAccess`]), the tables;
//! - [`cli`]: the `presage-ctl` program;
//! - [`pfa_cli`]: `presage-ctl pfa train | eval | prior`, the failure model's files;
//! - [`events_cli`]: `presage-ctl events add | list | cancel`, known events;
//! - [`forecast_cli`]: `presage-ctl forecast`, predicted load and its advice;
//! - [`capacity_cli`]: `presage-ctl capacity`, projected bytes and load, nodes to add.

pub mod capacity_cli;
pub mod cli;
pub mod events_cli;
pub mod forecast_cli;
pub mod pfa_cli;
pub mod shifts_cli;

use presage_client::proto::{ClusterInfo, ShardRow};
use presage_shardmgr::{AdminCommand, AdminOutcome, Operator};
use serde::de::DeserializeOwned;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The admin API could not be reached.
    #[error("cannot reach the admin API at {addr}: {reason}")]
    Unreachable {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The node answered with an error.
    #[error("{status}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The node's message.
        message: String,
    },
    /// The answer was not what was expected.
    #[error("unexpected answer: {0}")]
    Decode(String),
    /// A key as typed could not be read (see [`parse_key`]).
    #[error("bad key {0}")]
    BadKey(String),
    /// A file could not be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Failure analysis refused its input.
    #[error(transparent)]
    Pfa(#[from] presage_pfa::PfaError),
}

/// How long a GET or DELETE is retried while the admin API answers 503 (retry later): a shard
/// manager fail-over or leader election takes a few election timeouts.
pub const RETRY_UNAVAILABLE_MS: u64 = 10_000;
/// The pause between two such tries.
const RETRY_PAUSE_MS: u64 = 200;

/// How to reach a cluster's admin APIs: HTTPS trusting the cluster CA (plain HTTP to an
/// insecure cluster), and a bearer token.
#[derive(Clone, Default)]
pub struct AdminAccess {
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    token: Option<String>,
}

impl AdminAccess {
    /// HTTPS trusting the CA at `ca_cert` (plain HTTP without one), with `token`.
    pub fn load(ca_cert: Option<&std::path::Path>, token: Option<String>) -> Result<AdminAccess, CtlError> {
        let tls = match ca_cert {
            Some(path) => Some(
                presage_security::tls::ca_client_config(path)
                    .map_err(|e| CtlError::File { path: path.display().to_string(), reason: e.to_string() })?,
            ),
            None => None,
        };
        Ok(AdminAccess { tls, token })
    }

    /// Plain HTTP without a token (an insecure cluster).
    pub fn insecure() -> AdminAccess {
        AdminAccess::default()
    }
}

/// One node's admin API and how to reach it.
#[derive(Clone)]
pub struct AdminEndpoint {
    /// `host:port`.
    pub addr: String,
    /// TLS and token.
    pub access: AdminAccess,
}

impl AdminEndpoint {
    /// A client of it.
    pub fn client(&self) -> AdminClient {
        AdminClient::new(&self.addr, &self.access)
    }
}

/// A connection to one node's admin API. GETs and DELETEs ride out a short unavailability
/// (`RETRY_UNAVAILABLE_MS`); commands (POST) and PUTs are sent once.
pub struct AdminClient {
    addr: String,
    token: Option<String>,
    https: bool,
    agent: ureq::Agent,
}

impl AdminClient {
    /// The admin API at `addr` (`host:port`), reached as `access` says.
    pub fn new(addr: &str, access: &AdminAccess) -> Self {
        let mut builder = ureq::AgentBuilder::new().timeout(std::time::Duration::from_secs(30));
        if let Some(tls) = &access.tls {
            builder = builder.tls_config(std::sync::Arc::clone(tls));
        }
        let addr = addr.trim_start_matches("http://").trim_start_matches("https://").to_string();
        AdminClient { addr, token: access.token.clone(), https: access.tls.is_some(), agent: builder.build() }
    }

    fn url(&self, path: &str) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }

    fn send(&self, req: ureq::Request, body: Option<&serde_json::Value>) -> Result<String, CtlError> {
        let req = match &self.token {
            Some(t) => req.set("Authorization", &format!("Bearer {t}")),
            None => req,
        };
        let result = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match result {
            Ok(resp) => resp.into_string().map_err(|e| CtlError::Decode(e.to_string())),
            Err(ureq::Error::Status(status, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                let message = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                    .unwrap_or(text);
                Err(CtlError::Api { status, message })
            }
            Err(e) => {
                let hint = if self.https { "" } else { " (a secure node speaks HTTPS: give --ca-cert)" };
                Err(CtlError::Unreachable { addr: self.addr.clone(), reason: format!("{e}{hint}") })
            }
        }
    }

    /// Sends a request that is safe to repeat, again every `RETRY_PAUSE_MS` while the API
    /// answers 503 (the shard manager moving or starting, a leader being elected), for at most
    /// `RETRY_UNAVAILABLE_MS`; then the last answer.
    fn send_idempotent(&self, req: ureq::Request) -> Result<String, CtlError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(RETRY_UNAVAILABLE_MS);
        loop {
            match self.send(req.clone(), None) {
                Err(CtlError::Api { status: 503, .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(RETRY_PAUSE_MS));
                }
                answer => return answer,
            }
        }
    }

    /// `GET path` as raw JSON text.
    pub fn get_raw(&self, path: &str) -> Result<String, CtlError> {
        self.send_idempotent(self.agent.get(&self.url(path)))
    }

    /// `GET path`, decoded.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CtlError> {
        let text = self.get_raw(path)?;
        serde_json::from_str(&text).map_err(|e| CtlError::Decode(e.to_string()))
    }

    /// `DELETE path`; the raw answer.
    pub fn delete(&self, path: &str) -> Result<String, CtlError> {
        self.send_idempotent(self.agent.delete(&self.url(path)))
    }

    /// `PUT path` with a JSON body; the raw JSON answer.
    pub fn put_raw(&self, path: &str, body: &serde_json::Value) -> Result<String, CtlError> {
        self.send(self.agent.put(&self.url(path)), Some(body))
    }

    /// Sends an operator's command.
    pub fn admin(&self, command: &AdminCommand) -> Result<AdminOutcome, CtlError> {
        let body = serde_json::to_value(command).map_err(|e| CtlError::Decode(e.to_string()))?;
        let text = self.send(self.agent.post(&self.url("/v1/admin")), Some(&body))?;
        serde_json::from_str(&text).map_err(|e| CtlError::Decode(e.to_string()))
    }

    /// The cluster's state.
    pub fn cluster(&self) -> Result<ClusterInfo, CtlError> {
        self.get("/v1/cluster")
    }

    /// The cluster's state, asked once (no retry while the shard manager is unavailable).
    pub fn cluster_once(&self) -> Result<ClusterInfo, CtlError> {
        let text = self.send(self.agent.get(&self.url("/v1/cluster")), None)?;
        serde_json::from_str(&text).map_err(|e| CtlError::Decode(e.to_string()))
    }

    /// Shards matching the filters.
    pub fn shards(&self, node: Option<u64>, group: Option<u64>, key: Option<&[u8]>) -> Result<Vec<ShardRow>, CtlError> {
        self.get(&shards_path(node, group, key))
    }
}

/// The `/v1/shards` path with its filters.
pub fn shards_path(node: Option<u64>, group: Option<u64>, key: Option<&[u8]>) -> String {
    let mut q = Vec::new();
    if let Some(n) = node {
        q.push(format!("node={n}"));
    }
    if let Some(g) = group {
        q.push(format!("group={g}"));
    }
    if let Some(k) = key {
        // Any bytes: hex, which needs no escaping in a URL.
        q.push(format!("key-hex={}", hex(k)));
    }
    if q.is_empty() {
        "/v1/shards".into()
    } else {
        format!("/v1/shards?{}", q.join("&"))
    }
}

/// A key for people: text when printable (and not itself starting with `0x`), else hex,
/// so that [`parse_key`] reads back what is shown; `-inf`/`+inf` for open ends.
pub fn show_key(k: Option<&[u8]>, start: bool) -> String {
    match k {
        None => "+inf".into(),
        Some([]) if start => "-inf".into(),
        Some(k) if k.iter().all(|b| b.is_ascii_graphic() && *b != b'\\') && !k.starts_with(b"0x") => {
            String::from_utf8_lossy(k).into_owned()
        }
        Some(k) => format!("0x{}", hex(k)),
    }
}

fn hex(k: &[u8]) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

/// A key as operators type it (`--key`, `split ID KEY`): `0x` then hex digits for any bytes
/// (`0x00ff`, what tables show for keys that are not plain text), or text in which `\xNN`
/// is one byte and `\\` a backslash (`user\x00id`). A text key starting with `0x` is
/// typed `\x30x...`.
pub fn parse_key(typed: &str) -> Result<Vec<u8>, CtlError> {
    let bad = |why: &str| CtlError::BadKey(format!("`{typed}`: {why}"));
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    if let Some(digits) = typed.strip_prefix("0x") {
        let d = digits.as_bytes();
        if !d.len().is_multiple_of(2) {
            return Err(bad("an odd number of hex digits"));
        }
        return d
            .chunks(2)
            .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| bad("not hex digits after 0x"));
    }
    let mut out = Vec::with_capacity(typed.len());
    let mut bytes = typed.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'\\') => out.push(b'\\'),
            Some(b'x') => {
                let byte = bytes.next().and_then(nibble).zip(bytes.next().and_then(nibble));
                out.push(byte.map(|(h, l)| h << 4 | l).ok_or_else(|| bad("\\x takes two hex digits"))?);
            }
            _ => return Err(bad("a backslash starts \\xNN or \\\\")),
        }
    }
    Ok(out)
}

pub(crate) fn human_bytes(b: u64) -> String {
    bytesize::ByteSize(b).to_string()
}

/// A Unix time in ms as an RFC 3339 date to the second.
pub fn time_text(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

/// Lays out rows under a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out += &line(r.clone());
    }
    out
}

/// The nodes table: state, place, addresses, and from each node's last heartbeat its disk
/// use, replicas, leaders and how long ago it was heard from.
pub fn nodes_table(info: &ClusterInfo) -> String {
    let rows: Vec<Vec<String>> = info
        .nodes
        .iter()
        .map(|n| {
            let status = info.node_status.iter().find(|s| s.node == n.id);
            let used = status.map_or("-".into(), |s| human_bytes(s.used_bytes));
            let free = status.map_or("-".into(), |s| human_bytes(s.available_bytes));
            let replicas = status.map_or("-".into(), |s| s.replicas.to_string());
            let leaders = status.map_or("-".into(), |s| s.leaders.to_string());
            let heard = status
                .and_then(|s| s.last_heartbeat_ms_ago)
                .map_or("never".into(), |ms| format!("{:.1}s ago", ms as f64 / 1000.0));
            vec![
                n.id.to_string(),
                format!("{:?}", n.state),
                n.region.clone(),
                n.group.map_or("-".into(), |g| g.to_string()),
                used,
                free,
                human_bytes(n.capacity_bytes),
                replicas,
                leaders,
                heard,
                n.client_addr.clone(),
                n.resp_addr.clone(),
                n.admin_addr.clone(),
                if n.insecure { "INSECURE".into() } else { "tls".into() },
            ]
        })
        .collect();
    let head = [
        "NODE", "STATE", "REGION", "GROUP", "USED", "FREE", "CAPACITY", "REPLICAS", "LEADERS", "HEARD", "NATIVE",
        "RESP", "ADMIN", "SECURITY",
    ];
    table(&head, &rows)
}

/// The nodes as JSON: each node's entry with its `status` (the last heartbeat's figures).
pub fn nodes_json(info: &ClusterInfo) -> serde_json::Value {
    let nodes = info.nodes.iter().map(|n| {
        let mut v = serde_json::to_value(n).unwrap_or_default();
        let status = info.node_status.iter().find(|s| s.node == n.id);
        v["status"] = serde_json::to_value(status).unwrap_or_default();
        v
    });
    serde_json::Value::Array(nodes.collect())
}

/// The groups table.
pub fn groups_table(info: &ClusterInfo) -> String {
    let rows: Vec<Vec<String>> = info
        .groups
        .iter()
        .map(|g| {
            let members: Vec<String> = g.nodes.iter().map(u64::to_string).collect();
            vec![g.id.to_string(), members.join(","), g.failures.len().to_string()]
        })
        .collect();
    table(&["GROUP", "NODES", "FAILURES"], &rows)
}

/// The shards table.
pub fn shards_table(rows: &[ShardRow]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let s = &r.shard;
            let replicas: Vec<String> =
                s.replicas
                    .iter()
                    .map(|x| {
                        if x.role == presage_shardmgr::Role::Voter {
                            x.node.to_string()
                        } else {
                            format!("{}L", x.node)
                        }
                    })
                    .collect();
            vec![
                s.id.to_string(),
                format!("[{}, {})", show_key(Some(&s.start), true), show_key(s.end.as_deref(), false)),
                format!("{}.{}", s.epoch.version, s.epoch.conf_ver),
                r.group.map_or("-".into(), |g| g.to_string()),
                replicas.join(","),
                s.leader.map_or("-".into(), |l| l.to_string()),
                human_bytes(r.size_bytes),
                r.keys.to_string(),
                format!("{:.0}", r.load.read_qps),
                format!("{:.0}", r.load.write_qps),
                format!("{}/s", human_bytes((r.load.read_bytes_per_sec + r.load.write_bytes_per_sec) as u64)),
                if r.load.qps() > 0.0 { format!("{:.2}", r.load.p99_ms) } else { "-".into() },
                format!("{:.1}", r.load.errors_per_sec),
                if r.risk.risk > 0.0 { format!("{:.2} ({})", r.risk.risk, r.risk.cause()) } else { "0".into() },
            ]
        })
        .collect();
    let head = [
        "SHARD", "RANGE", "EPOCH", "GROUP", "REPLICAS", "LEADER", "SIZE", "KEYS", "READS/S", "WRITES/S", "BYTES/S",
        "P99 MS", "ERRORS/S", "RISK",
    ];
    table(&head, &rows)
}

/// What `presage-ctl shards --top N --by ...` ranks shards by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HotBy {
    /// Reads per second.
    Reads,
    /// Writes per second.
    Writes,
    /// Bytes read and written per second.
    Bytes,
    /// Size on disk.
    Size,
    /// Risk ([`presage_shardmgr::RangeRisk`]).
    Risk,
}

/// The `n` hottest of `rows` by `by`, hottest first (ties by shard id).
pub fn hottest(mut rows: Vec<ShardRow>, by: HotBy, n: usize) -> Vec<ShardRow> {
    let heat = |r: &ShardRow| match by {
        HotBy::Reads => r.load.read_qps,
        HotBy::Writes => r.load.write_qps,
        HotBy::Bytes => r.load.read_bytes_per_sec + r.load.write_bytes_per_sec,
        HotBy::Size => r.size_bytes as f64,
        HotBy::Risk => r.risk.risk,
    };
    rows.sort_by(|a, b| heat(b).total_cmp(&heat(a)).then(a.shard.id.cmp(&b.shard.id)));
    rows.truncate(n);
    rows
}

/// The operators table.
pub fn operators_table(ops: &[Operator]) -> String {
    let rows: Vec<Vec<String>> = ops
        .iter()
        .map(|o| {
            vec![
                o.id.to_string(),
                o.shard.to_string(),
                format!("{:?}", o.kind),
                format!("{}/{}", o.next_step.min(o.steps.len()), o.steps.len()),
                format!("{:?}", o.status),
            ]
        })
        .collect();
    table(&["OPERATOR", "SHARD", "KIND", "STEP", "STATUS"], &rows)
}

/// `presage-ctl migrations`: one row per node evacuation, running first.
pub fn migrations_table(migrations: &[presage_shardmgr::MigrationView]) -> String {
    let rows: Vec<Vec<String>> = migrations
        .iter()
        .map(|v| {
            let m = &v.migration;
            let running: Vec<String> = v.running.iter().map(|(shard, step)| format!("{shard}:{step}")).collect();
            vec![
                m.id.to_string(),
                m.node.to_string(),
                m.target.map_or("-".into(), |t| t.to_string()),
                format!("{:?}", m.cause).to_lowercase(),
                format!("{:?}", m.stage).to_lowercase(),
                prob(v.risk),
                v.shards_left.to_string(),
                human_bytes(m.bytes_copied),
                format!("{}/s", human_bytes(v.rate_bytes_per_sec as u64)),
                v.eta_secs.map_or("-".into(), |s| format!("{s:.0}s")),
                if running.is_empty() { m.note.clone() } else { running.join(" ") },
            ]
        })
        .collect();
    table(
        &["MIGRATION", "NODE", "TARGET", "CAUSE", "STAGE", "RISK", "SHARDS LEFT", "COPIED", "RATE", "ETA", "RUNNING"],
        &rows,
    )
}

fn prob(p: Option<f64>) -> String {
    match p {
        None => "-".to_string(),
        Some(p) if p > 0.0 && p < 1e-3 => format!("{p:.1e}"),
        Some(p) => format!("{p:.3}"),
    }
}

/// `presage-ctl risk`: nodes, regions, models.
pub fn risk_text(r: &presage_pfa::risk::RiskReport) -> String {
    let rows: Vec<Vec<String>> = r
        .nodes
        .iter()
        .map(|n| {
            let warnings: Vec<String> = n.warnings.iter().map(|w| w.to_string()).collect();
            vec![
                n.node.to_string(),
                n.region.clone(),
                prob(n.probability),
                prob(n.telemetry_probability),
                prob(n.disk_probability),
                format!("{} ({} failed)", prob(n.prior_probability), n.recent_failures),
                if warnings.is_empty() { "-".into() } else { warnings.join(",") },
            ]
        })
        .collect();
    let mut out = table(&["NODE", "REGION", "RISK", "TELEMETRY", "DISK", "HISTORY (30 D)", "WARNINGS"], &rows);
    let rows: Vec<Vec<String>> = r
        .regions
        .iter()
        .map(|g| {
            vec![
                g.region.clone(),
                prob(g.probability),
                g.nodes.to_string(),
                g.riskiest_node.map_or_else(|| "-".into(), |n| n.to_string()),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(&["REGION", "RISK", "NODES", "RISKIEST"], &rows));
    let model = |name: &str, m: &Option<presage_pfa::risk::ModelInfo>| match m {
        None => format!("{name}: none loaded (its part of the risk is unknown)\n"),
        Some(m) => format!(
            "{name}: version {}, horizon {} s, {} features, threshold {:.3}, {} trees\n",
            m.version, m.horizon_secs, m.features, m.threshold, m.trained_on.trees
        ),
    };
    out.push('\n');
    out.push_str(&model("node model", &r.models.node_model));
    out.push_str(&model("disk model", &r.models.disk_model));
    match &r.models.last_retrain {
        None => out.push_str("retraining: none yet\n"),
        Some(t) => out.push_str(&format!(
            "retraining: {} episodes ({} failures), candidate PR-AUC {:.3} vs current {} on the newest {}: {}\n",
            t.episodes,
            t.failures,
            t.candidate_pr_auc,
            t.current_pr_auc.map_or_else(|| "-".into(), |p| format!("{p:.3}")),
            t.test_episodes,
            if t.adopted { format!("adopted as version {}", t.version) } else { "kept the current model".into() },
        )),
    }
    out.push_str(&format!("nodes restored from history by this manager: {}\n", r.models.restored_nodes));
    out
}

/// Signals `presage-ctl history` shows (mean and max per minute).
const HISTORY_SIGNALS: [presage_pfa::telemetry::Signal; 5] = [
    presage_pfa::telemetry::Signal::EngineSyncMeanMs,
    presage_pfa::telemetry::Signal::ProposalMeanMs,
    presage_pfa::telemetry::Signal::PeerRttMinMs,
    presage_pfa::telemetry::Signal::CpuBusyPct,
    presage_pfa::telemetry::Signal::MemAvailablePct,
];

/// `presage-ctl history`: a node's per-minute history, a few signals as `mean/max`.
pub fn history_text(minutes: &[presage_pfa::aggregate::MinuteSummary]) -> String {
    if minutes.is_empty() {
        return "no history kept for this node in that span\n".into();
    }
    let mut header = vec!["MINUTE (UTC)".to_string(), "SAMPLES".into()];
    header.extend(HISTORY_SIGNALS.iter().map(|s| s.name().to_string()));
    let rows: Vec<Vec<String>> = minutes
        .iter()
        .map(|m| {
            let secs = m.minute_ms / 1000;
            let mut row = vec![format!("{:02}:{:02}", secs / 3600 % 24, secs / 60 % 60), m.samples.to_string()];
            row.extend(
                HISTORY_SIGNALS
                    .iter()
                    .map(|s| m.signals.get(s).map_or_else(|| "-".into(), |x| format!("{:.1}/{:.1}", x.mean, x.max))),
            );
            row
        })
        .collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    table(&header, &rows)
}

pub(crate) fn evidence_text(w: &presage_pfa::warning::Warning) -> String {
    w.evidence
        .iter()
        .map(|e| {
            let peers = e.peer_ratio.map_or_else(String::new, |r| format!(", {r:.1}x peers"));
            format!("{} {:.2} (baseline {:.2}, {:+.1} sd{peers}, {})", e.signal, e.value, e.baseline, e.z, e.detector)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `presage-ctl warnings`: the active warnings with their evidence.
pub fn warnings_text(a: &presage_pfa::warning::WarningsAnswer) -> String {
    if a.active.is_empty() {
        return "no active warnings\n".into();
    }
    let rows: Vec<Vec<String>> = a
        .active
        .iter()
        .map(|w| {
            vec![w.node.to_string(), w.region.clone(), w.kind.to_string(), w.raised_at_ms.to_string(), evidence_text(w)]
        })
        .collect();
    table(&["NODE", "REGION", "KIND", "RAISED_MS", "EVIDENCE"], &rows)
}

/// One line per warning event (`presage-ctl warnings --follow`).
pub fn warning_event_line(e: &presage_pfa::warning::WarningEvent) -> String {
    format!(
        "#{} {} {:?} node {} ({}) {}: {}\n",
        e.seq,
        e.at_ms,
        e.action,
        e.warning.node,
        e.warning.region,
        e.warning.kind,
        evidence_text(&e.warning)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_columns_and_keys_show_readably() {
        let t = table(&["A", "LONG"], &[vec!["wide-cell".into(), "x".into()]]);
        assert_eq!(t, "A          LONG\nwide-cell  x\n");
        assert_eq!(show_key(Some(b""), true), "-inf");
        assert_eq!(show_key(None, false), "+inf");
        assert_eq!(show_key(Some(b"user:1"), true), "user:1");
        assert_eq!(show_key(Some(&[0xff, 0x00]), true), "0xff00");
        assert_eq!(shards_path(Some(2), None, Some(b"a b")), "/v1/shards?node=2&key-hex=612062");
    }

    #[test]
    fn the_hottest_shards_come_first_by_the_chosen_measure() {
        let row = |id: u64, reads: f64, writes: f64, size: u64| ShardRow {
            shard: presage_shardmgr::ShardMeta {
                id,
                start: vec![],
                end: None,
                epoch: Default::default(),
                replicas: vec![],
                leader: None,
                merging_into: None,
            },
            group: None,
            size_bytes: size,
            keys: 0,
            qps: reads + writes,
            bytes_per_sec: 0.0,
            load: presage_shardmgr::ShardLoad { read_qps: reads, write_qps: writes, ..Default::default() },
            risk: presage_shardmgr::RangeRisk { risk: size as f64 / 100.0, ..Default::default() },
        };
        let rows = vec![row(1, 10.0, 500.0, 5), row(2, 900.0, 1.0, 50), row(3, 0.0, 0.0, 7)];
        let ids = |by, n| hottest(rows.clone(), by, n).iter().map(|r| r.shard.id).collect::<Vec<_>>();
        assert_eq!(ids(HotBy::Reads, 2), vec![2, 1]);
        assert_eq!(ids(HotBy::Writes, 1), vec![1]);
        assert_eq!(ids(HotBy::Size, 3), vec![2, 3, 1]);
        assert_eq!(ids(HotBy::Bytes, 3), vec![1, 2, 3], "ties by id");
        assert_eq!(ids(HotBy::Risk, 2), vec![2, 3]);
        let table = shards_table(&rows);
        assert!(table.lines().next().is_some_and(|h| h.contains("P99 MS") && h.ends_with("RISK")), "{table}");
        assert!(table.contains("0.50 (nodes)"), "{table}");
    }

    #[test]
    fn keys_are_taken_in_hex_or_escaped_and_shown_so_that_they_read_back() {
        assert_eq!(parse_key("user:1").ok(), Some(b"user:1".to_vec()));
        assert_eq!(parse_key("0x00ff").ok(), Some(vec![0x00, 0xff]));
        assert_eq!(parse_key("a\\x00b\\\\").ok(), Some(b"a\0b\\".to_vec()));
        assert_eq!(parse_key("\\x30x1").ok(), Some(b"0x1".to_vec()));
        for bad in ["0x0", "0xzz", "a\\x0", "a\\q"] {
            assert!(matches!(parse_key(bad), Err(CtlError::BadKey(_))), "{bad}");
        }
        for key in [&b"plain"[..], b"0x1", b"back\\slash", &[0, 1, 0xff]] {
            let shown = show_key(Some(key), false);
            assert_eq!(parse_key(&shown).ok().as_deref(), Some(key), "{shown}");
        }
    }
}
