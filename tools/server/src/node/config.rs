//! The node's configuration file (design.md §7): TOML, kebab-case keys, human units.
//!
//! Every setting has one source: the struct fields below and the settings structs of the
//! crates they embed (their doc comments are the reference; `presage config-defaults`
//! prints them all with their defaults). A key ending in `-ms` takes a number of
//! milliseconds or a duration (`"500ms"`, `"2s"`, `"1m"`); a key ending in `-bytes` takes a
//! number of bytes or a size (`"64MiB"`, `"1GB"`). Unknown keys are warned about, not
//! refused (a newer file on an older node still starts); bad values are refused with the
//! key's name.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use presage_client::NetConfig;
use presage_engine::RocksConfig;
use presage_replication::{RaftConfig, TcpConfig};
use serde::{Deserialize, Serialize};

use crate::resp::RespConfig;
use crate::server::ServerConfig;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not TOML, or a value of the wrong type.
    #[error("{0}")]
    Parse(String),
    /// A value out of its range.
    #[error("invalid setting: {0}")]
    Invalid(String),
}

/// Trust (design.md §10): TLS on every port and credentials for every caller, unless the node
/// is explicitly insecure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct SecurityConfig {
    /// Development only: no TLS, no users, no tokens; every client may do anything and peers
    /// are known by what they claim (the cluster id is still checked). Logged loudly.
    pub insecure: bool,
    /// Holds `ca.crt`, `node.crt` (naming this node's id and hosts) and `node.key`
    /// (`presage cert`).
    pub certs_dir: PathBuf,
    /// Users (RESP and native logins) and admin API tokens (`presage user`).
    pub users_file: PathBuf,
    /// Serve `/metrics` on the admin API without a token (for a Prometheus that has none).
    pub open_metrics: bool,
    /// A peer connection must complete TLS and its handshake within this, in milliseconds.
    pub handshake_timeout_ms: u64,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            insecure: false,
            certs_dir: PathBuf::from("certs"),
            users_file: PathBuf::from("users.toml"),
            open_metrics: false,
            handshake_timeout_ms: 5_000,
        }
    }
}

/// How a node writes its log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: time, level, message, fields, spans.
    Json,
}

/// Requests per second a node states it serves unless configured (`capacity-qps`): a
/// conservative figure, below the puts per second a whole three-node cluster sustained on one
/// two-core machine (`presage-bench`, about 6,800).
pub const DEFAULT_CAPACITY_QPS: u64 = 5_000;

/// Everything a node is configured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct NodeConfig {
    /// This node's id: unique in the cluster, never reused.
    pub node_id: u64,
    /// Its failure domain (a replication group holds one node per region).
    pub region: String,
    /// Where its data lives.
    pub data_dir: PathBuf,
    /// Bytes of storage it offers.
    pub capacity_bytes: u64,
    /// Requests per second it can serve as the leader of its shards: measure it on the node's
    /// hardware (`presage-bench`); the shard manager's capacity advice projects load against
    /// it (0: not stated, no load advice for this node).
    pub capacity_qps: u64,
    /// Start a new cluster when the data dir is empty (exactly one node of a new cluster).
    pub bootstrap: bool,
    /// Peer addresses (`raft-listen` / `raft-advertise`) of nodes to join through (and to find
    /// the cluster at after a restart).
    pub join: Vec<String>,
    /// Where the native protocol listens.
    pub native_listen: String,
    /// The native address other nodes and clients use (default: `native-listen`).
    pub native_advertise: String,
    /// The peer port: Raft messages and the control plane (other nodes only; mutual TLS).
    pub raft_listen: String,
    /// The peer address other nodes use (default: `raft-listen`).
    pub raft_advertise: String,
    /// Where RESP listens (empty: no RESP). Loopback unless set otherwise.
    pub resp_listen: String,
    /// Where the HTTP admin API listens (empty: none). Loopback unless set otherwise.
    pub admin_listen: String,
    /// TLS and credentials.
    pub security: SecurityConfig,
    /// Serve the fault-injection endpoints of the admin API (tests and demos only).
    pub fault_injection: bool,
    /// Log filter (`RUST_LOG` syntax); the `RUST_LOG` environment variable overrides it.
    pub log: String,
    /// How log lines are written (to standard output): `text` (for people) or `json` (one
    /// object per line, for log collectors).
    pub log_format: LogFormat,
    /// Node server: request handling, heartbeats, the shard manager.
    pub server: ServerConfig,
    /// Replication.
    pub raft: RaftConfig,
    /// Raft's TCP transport.
    pub raft_tcp: TcpConfig,
    /// Native protocol connections.
    pub native: NetConfig,
    /// RESP limits.
    pub resp: RespConfig,
    /// The storage engine.
    pub rocksdb: RocksConfig,
    /// The node's own disk check, which hands its leaderships away when its disk stalls,
    /// slows or fails (`node/self_check.rs`).
    pub self_check: presage_pfa::local::LocalConfig,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_id: 1,
            region: "local".into(),
            data_dir: PathBuf::from("presage-data"),
            capacity_bytes: 100 << 30,
            capacity_qps: DEFAULT_CAPACITY_QPS,
            bootstrap: false,
            join: Vec::new(),
            native_listen: "127.0.0.1:7400".into(),
            native_advertise: String::new(),
            raft_listen: "127.0.0.1:7401".into(),
            raft_advertise: String::new(),
            resp_listen: "127.0.0.1:6379".into(),
            admin_listen: "127.0.0.1:7480".into(),
            security: SecurityConfig::default(),
            fault_injection: false,
            log: "info".into(),
            log_format: LogFormat::Text,
            server: ServerConfig::default(),
            raft: RaftConfig::default(),
            raft_tcp: TcpConfig::default(),
            native: NetConfig::default(),
            resp: RespConfig::default(),
            rocksdb: RocksConfig::default(),
            self_check: presage_pfa::local::LocalConfig::default(),
        }
    }
}

/// A loaded configuration and the keys it did not know.
#[derive(Debug)]
pub struct Loaded {
    /// The configuration, validated.
    pub config: NodeConfig,
    /// Dotted paths of keys that are not settings (to warn about).
    pub unknown_keys: Vec<String>,
}

impl NodeConfig {
    /// Reads and validates the file at `path`, then applies `overrides` (`key.path=value`,
    /// TOML values; a bare word is taken as a string).
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Loaded, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.into(), source })?,
            None => String::new(),
        };
        Self::parse(&text, overrides)
    }

    /// Parses and validates TOML `text` with `overrides` applied.
    pub fn parse(text: &str, overrides: &[String]) -> Result<Loaded, ConfigError> {
        let mut value: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        for o in overrides {
            apply_override(&mut value, o)?;
        }
        let mut value = toml::Value::Table(value);
        human_units(&mut value, "")?;
        let mut unknown_keys = Vec::new();
        let config: NodeConfig = serde_ignored::deserialize(value, |p| unknown_keys.push(p.to_string()))
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(Loaded { config, unknown_keys })
    }

    /// Checks every setting, naming the key of the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.node_id == 0 {
            return bad("node-id must be positive".into());
        }
        if self.region.is_empty() {
            return bad("region must not be empty".into());
        }
        if let Err(why) = self.self_check.validate() {
            return bad(format!("self-check: {why}"));
        }
        if self.data_dir.as_os_str().is_empty() {
            return bad("data-dir must not be empty".into());
        }
        for (key, addr, required) in [
            ("native-listen", &self.native_listen, true),
            ("raft-listen", &self.raft_listen, true),
            ("resp-listen", &self.resp_listen, false),
            ("admin-listen", &self.admin_listen, false),
        ] {
            if (required || !addr.is_empty()) && addr.parse::<SocketAddr>().is_err() {
                return bad(format!("{key} = {addr:?} is not an ip:port address"));
            }
        }
        for (key, addr) in [("native-advertise", self.native_advertise()), ("raft-advertise", self.raft_advertise())] {
            match addr.parse::<SocketAddr>() {
                Ok(a) if a.ip().is_unspecified() => {
                    return bad(format!("{key} must be set to a reachable address when listening on {}", a.ip()))
                }
                Ok(_) => {}
                Err(_) => return bad(format!("{key} = {addr:?} is not an ip:port address")),
            }
        }
        for j in &self.join {
            if j.parse::<SocketAddr>().is_err() {
                return bad(format!("join address {j:?} is not an ip:port address"));
            }
        }
        if self.capacity_bytes == 0 {
            return bad("capacity-bytes must be positive".into());
        }
        if self.security.handshake_timeout_ms == 0 {
            return bad("security.handshake-timeout-ms must be positive".into());
        }
        if !self.security.insecure
            && (self.security.certs_dir.as_os_str().is_empty() || self.security.users_file.as_os_str().is_empty())
        {
            return bad("security.certs-dir and security.users-file must be set (or security.insecure = true)".into());
        }
        self.server.validate().map_err(|e| ConfigError::Invalid(format!("server: {e}")))?;
        self.raft.validate().map_err(|e| ConfigError::Invalid(format!("raft: {e}")))?;
        self.raft_tcp.validate(self.raft.max_msg_bytes).map_err(|e| ConfigError::Invalid(format!("raft-tcp: {e}")))?;
        self.native.validate().map_err(|e| ConfigError::Invalid(format!("native: {e}")))?;
        self.rocksdb.validate().map_err(|e| ConfigError::Invalid(format!("rocksdb: {e}")))?;
        for (key, v) in [
            ("resp.max-bulk-bytes", self.resp.max_bulk_bytes),
            ("resp.max-args", self.resp.max_args),
            ("resp.max-inline-bytes", self.resp.max_inline_bytes),
            ("resp.max-connections", self.resp.max_connections),
            ("resp.max-scan-count", self.resp.max_scan_count),
            ("resp.max-dbsize-keys", self.resp.max_dbsize_keys),
            ("resp.max-command-bytes", self.resp.max_command_bytes),
            ("resp.max-reply-buffer-bytes", self.resp.max_reply_buffer_bytes),
            ("resp.max-pipeline-commands", self.resp.max_pipeline_commands),
            ("resp.idle-timeout-ms", self.resp.idle_timeout_ms as usize),
            ("resp.command-timeout-ms", self.resp.command_timeout_ms as usize),
            ("resp.slowlog-max-entries", self.resp.slowlog_max_entries),
        ] {
            if v == 0 {
                return bad(format!("{key} must be positive"));
            }
        }
        if self.resp.max_command_bytes < self.resp.max_bulk_bytes {
            return bad(format!(
                "resp.max-command-bytes ({}) must hold one resp.max-bulk-bytes argument ({})",
                self.resp.max_command_bytes, self.resp.max_bulk_bytes
            ));
        }
        if self.resp.max_bulk_bytes > self.native.max_frame_bytes / 2 {
            return bad(format!(
                "resp.max-bulk-bytes ({}) must be at most half of native.max-frame-bytes ({})",
                self.resp.max_bulk_bytes, self.native.max_frame_bytes
            ));
        }
        Ok(())
    }

    /// The native address others use.
    pub fn native_advertise(&self) -> &str {
        if self.native_advertise.is_empty() {
            &self.native_listen
        } else {
            &self.native_advertise
        }
    }

    /// The Raft address others use.
    pub fn raft_advertise(&self) -> &str {
        if self.raft_advertise.is_empty() {
            &self.raft_listen
        } else {
            &self.raft_advertise
        }
    }

    /// The whole configuration as TOML (every key with its value).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print the configuration: {e}\n"))
    }
}

/// Sets `path.to.key=value` in `table`.
fn apply_override(table: &mut toml::Table, o: &str) -> Result<(), ConfigError> {
    let Some((path, raw)) = o.split_once('=') else {
        return Err(ConfigError::Parse(format!("override {o:?} is not key=value")));
    };
    let value = match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = path.trim().split('.').collect();
    let mut at = table;
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            return Err(ConfigError::Parse(format!("override {o:?} has an empty key")));
        }
        if i + 1 == parts.len() {
            at.insert((*part).to_string(), value);
            return Ok(());
        }
        let next = at.entry((*part).to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = next.as_table_mut().ok_or_else(|| ConfigError::Parse(format!("override {o:?}: {part} is not a table")))?;
    }
    Ok(())
}

/// Turns human units into numbers: `-ms` keys take durations, `-bytes` and `-bytes-per-sec`
/// keys sizes.
fn human_units(value: &mut toml::Value, path: &str) -> Result<(), ConfigError> {
    let toml::Value::Table(table) = value else { return Ok(()) };
    for (key, v) in table.iter_mut() {
        let here = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
        match v {
            toml::Value::Table(_) => human_units(v, &here)?,
            toml::Value::String(s) if key.ends_with("-ms") => {
                let d = humantime::parse_duration(s.trim())
                    .map_err(|e| ConfigError::Invalid(format!("{here} = {s:?}: not a duration ({e})")))?;
                *v = toml::Value::Integer(i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            }
            toml::Value::String(s) if key.ends_with("-bytes") || key.ends_with("-bytes-per-sec") => {
                let b: bytesize::ByteSize =
                    s.trim().parse().map_err(|e| ConfigError::Invalid(format!("{here} = {s:?}: not a size ({e})")))?;
                *v = toml::Value::Integer(i64::try_from(b.as_u64()).unwrap_or(i64::MAX));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units_and_overrides() {
        let text = r#"
            node-id = 3
            region = "eu"
            capacity-bytes = "2GiB"
            [server]
            request-timeout-ms = "1500ms"
            [rocksdb]
            block-cache-bytes = "64MiB"
        "#;
        let loaded = NodeConfig::parse(text, &["raft.election-ticks=20".into(), "region=us".into()]).expect("valid");
        let c = loaded.config;
        assert_eq!((c.node_id, c.region.as_str(), c.capacity_bytes), (3, "us", 2 << 30));
        assert_eq!(c.server.request_timeout_ms, 1_500);
        assert_eq!(c.rocksdb.block_cache_bytes, 64 << 20);
        assert_eq!(c.raft.election_ticks, 20);
        assert!(loaded.unknown_keys.is_empty(), "{:?}", loaded.unknown_keys);
    }

    #[test]
    fn unknown_keys_are_reported_not_refused() {
        let loaded = NodeConfig::parse("colour = 1\n[raft]\nspeed = 2\n", &[]).expect("valid");
        assert_eq!(loaded.unknown_keys, vec!["colour".to_string(), "raft.speed".to_string()]);
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, needle) in [
            ("node-id = 0", "node-id"),
            ("native-listen = \"nowhere\"", "native-listen"),
            ("[server]\nrequest-timeout-ms = \"soon\"", "server.request-timeout-ms"),
            ("[rocksdb]\nblock-cache-bytes = \"lots\"", "rocksdb.block-cache-bytes"),
            ("node-id = \"one\"", "node-id"),
            ("native-listen = \"0.0.0.0:1\"", "native-advertise"),
            ("join = [\"x\"]", "join"),
            ("[resp]\nmax-bulk-bytes = \"1GiB\"", "max-bulk-bytes"),
            ("not toml", "expected"),
        ] {
            let err = NodeConfig::parse(text, &[]).expect_err(text).to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn the_example_config_loads_without_unknown_keys() {
        let text = include_str!("../../config/node.example.toml");
        let loaded = NodeConfig::parse(text, &[]).expect("the example is valid");
        assert!(loaded.unknown_keys.is_empty(), "{:?}", loaded.unknown_keys);
        let c = loaded.config;
        assert_eq!((c.node_id, c.capacity_bytes, c.server.request_timeout_ms), (1, 500 << 30, 5_000));
        assert_eq!(c.rocksdb.block_cache_bytes, 1 << 30);
        assert_eq!(c.native_advertise(), "10.0.0.1:7400");
        assert_eq!((c.server.pfa.retrain_interval_ms, c.server.pfa.history_minutes), (6 * 3_600_000, 1_440));
        let raft = &c.raft;
        assert_eq!((raft.snapshot_rate_bytes_per_sec, raft.snapshot_rate_floor_bytes_per_sec), (100 << 20, 4 << 20));
        assert_eq!((raft.snapshot_backoff_p99_pct, raft.snapshot_governor_window_ms), (150, 1_000));
    }

    #[test]
    fn defaults_round_trip_through_toml() {
        let printed = NodeConfig::default().to_toml();
        let loaded = NodeConfig::parse(&printed, &[]).expect("defaults parse");
        assert_eq!(loaded.config, NodeConfig::default());
        assert!(loaded.unknown_keys.is_empty());
    }
}
