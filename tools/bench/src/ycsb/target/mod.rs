//! The targets a benchmark runs against, side by side in one invocation:
//!
//! - `raw-engine`: a bare RocksDB engine in this process (the physical limit of one node's
//!   storage); `three-engines`: three of them doing every synced write at once on the same disk
//!   (the bound of a 3-replica cluster on one machine) — [`engine`];
//! - `playground`, `playground-insecure`, `HOST:PORT[,...]`: Presage through its Rust client
//!   library, on a playground this process starts and stops or on a running cluster —
//!   [`cluster`];
//! - `resp:HOST:PORT[,...]`, `resp:playground`, `resp:playground-insecure`: any RESP server
//!   (redis-server, a Presage node's RESP port) through redis-rs multiplexed connections —
//!   [`resp`];
//! - `etcd:HOST:PORT[,...]`: etcd over its v3 gRPC API — [`etcd`].
//!
//! Every target offers the same three blocking calls; the network targets run their client's
//! futures on a shared runtime, so the driver's threads treat all targets alike. The RESP and
//! etcd targets open `connections` connections (one per client thread unless told otherwise)
//! and hand them out in turn, so that 32 threads over 8 connections keep 4 requests in flight
//! on each, as clients that multiplex do.

pub mod cluster;
pub mod engine;
pub mod etcd;
pub mod resp;

use std::str::FromStr;

use presage_client::ClientError;
use presage_engine::EngineError;

use presage_playground::PlaygroundError;

pub use cluster::{client_config, ClusterTarget};
pub use engine::{RawEngineTarget, ThreeEnginesTarget};
pub use etcd::EtcdTarget;
pub use resp::RespTarget;

/// Most bytes one scan page may carry from the raw engine (the cluster's client pages by its
/// own `max_scan_page_bytes`).
pub const MAX_SCAN_PAGE_BYTES: usize = 4 << 20;

/// Where a RESP target's server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RespAt {
    /// Running servers at these addresses (plain TCP, no login).
    Addrs(Vec<String>),
    /// A secure 3-node playground started for the run: TLS and its RESP login, connections
    /// spread over its nodes.
    Playground,
    /// The same without TLS and logins.
    PlaygroundInsecure,
}

/// Where to run, as given to `--target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    /// A bare RocksDB engine in a temporary folder, synced writes.
    RawEngine,
    /// Three bare engines in temporary folders on one disk; a write is the same synced write
    /// on all three at once.
    ThreeEngines,
    /// A 3-node playground in a temporary folder, started for the run and stopped after it
    /// (secure: TLS and a login, as every playground).
    Playground,
    /// The same without TLS and credentials (`--insecure`): what security costs, side by side.
    PlaygroundInsecure,
    /// A running cluster: native addresses of some of its nodes.
    Cluster(Vec<String>),
    /// A RESP server.
    Resp(RespAt),
    /// A running etcd cluster: client URLs' `HOST:PORT` of some of its members.
    Etcd(Vec<String>),
}

const EXPECTED: &str = "raw-engine, three-engines, playground, playground-insecure, HOST:PORT[,HOST:PORT...], \
     resp:HOST:PORT[,...], resp:playground, resp:playground-insecure or etcd:HOST:PORT[,...]";

impl TargetSpec {
    /// The name in reports.
    pub fn name(&self) -> String {
        match self {
            TargetSpec::RawEngine => "raw-engine".into(),
            TargetSpec::ThreeEngines => "three-engines".into(),
            TargetSpec::Playground => "playground".into(),
            TargetSpec::PlaygroundInsecure => "playground-insecure".into(),
            TargetSpec::Cluster(addrs) => addrs.join(","),
            TargetSpec::Resp(RespAt::Addrs(addrs)) => format!("resp:{}", addrs.join(",")),
            TargetSpec::Resp(RespAt::Playground) => "resp:playground".into(),
            TargetSpec::Resp(RespAt::PlaygroundInsecure) => "resp:playground-insecure".into(),
            TargetSpec::Etcd(addrs) => format!("etcd:{}", addrs.join(",")),
        }
    }

    /// True when the target starts a playground (and so needs the `presage` binary).
    pub fn starts_playground(&self) -> bool {
        matches!(
            self,
            TargetSpec::Playground
                | TargetSpec::PlaygroundInsecure
                | TargetSpec::Resp(RespAt::Playground | RespAt::PlaygroundInsecure)
        )
    }
}

/// `HOST:PORT[,HOST:PORT...]`, each checked.
fn parse_addrs(whole: &str, list: &str) -> Result<Vec<String>, String> {
    let addrs: Vec<String> = list.split(',').map(str::trim).map(String::from).collect();
    for a in &addrs {
        let ok = a.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !ok {
            return Err(format!("target {whole:?}: expected {EXPECTED} (bad address {a:?})"));
        }
    }
    Ok(addrs)
}

impl FromStr for TargetSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "raw-engine" => Ok(TargetSpec::RawEngine),
            "three-engines" => Ok(TargetSpec::ThreeEngines),
            "playground" => Ok(TargetSpec::Playground),
            "playground-insecure" => Ok(TargetSpec::PlaygroundInsecure),
            "resp:playground" => Ok(TargetSpec::Resp(RespAt::Playground)),
            "resp:playground-insecure" => Ok(TargetSpec::Resp(RespAt::PlaygroundInsecure)),
            _ => {
                if let Some(list) = s.strip_prefix("resp:") {
                    Ok(TargetSpec::Resp(RespAt::Addrs(parse_addrs(s, list)?)))
                } else if let Some(list) = s.strip_prefix("etcd:") {
                    Ok(TargetSpec::Etcd(parse_addrs(s, list)?))
                } else {
                    Ok(TargetSpec::Cluster(parse_addrs(s, s)?))
                }
            }
        }
    }
}

/// Why an operation or a target failed.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The raw engine refused.
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
    /// The cluster refused or did not answer.
    #[error("{0}")]
    Client(#[from] ClientError),
    /// The RESP server refused or did not answer.
    #[error("resp: {0}")]
    Resp(#[from] redis::RedisError),
    /// etcd refused or did not answer (boxed: its error is large).
    #[error("etcd: {0}")]
    Etcd(Box<etcd_client::Error>),
    /// The playground did not start.
    #[error("playground: {0}")]
    Playground(#[from] PlaygroundError),
    /// The target cannot do this operation.
    #[error("{target} does not support {what}")]
    Unsupported {
        /// The target.
        target: &'static str,
        /// The operation.
        what: &'static str,
    },
    /// A request took longer than the request timeout.
    #[error("no answer within {timeout_ms} ms")]
    Timeout {
        /// The timeout.
        timeout_ms: u64,
    },
    /// A temporary folder or a certificate could not be made or read.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

impl From<etcd_client::Error> for TargetError {
    fn from(e: etcd_client::Error) -> Self {
        TargetError::Etcd(Box::new(e))
    }
}

/// What every target does.
pub trait Target: Send + Sync {
    /// Reads `key`; `true` when it exists.
    fn read(&self, key: &[u8]) -> Result<bool, TargetError>;
    /// Writes `key` (acknowledged durable, as the target defines it).
    fn write(&self, key: &[u8], value: &[u8]) -> Result<(), TargetError>;
    /// Reads up to `max_keys` records in key order from `start`; returns how many.
    fn scan(&self, start: &[u8], max_keys: usize) -> Result<usize, TargetError>;
}

/// Hands out `n` connections in turn (each call the next one).
pub(crate) struct RoundRobin<C> {
    conns: Vec<C>,
    next: std::sync::atomic::AtomicUsize,
}

impl<C> RoundRobin<C> {
    /// `conns` must not be empty.
    pub(crate) fn new(conns: Vec<C>) -> Self {
        assert!(!conns.is_empty(), "a round robin needs a connection");
        RoundRobin { conns, next: std::sync::atomic::AtomicUsize::new(0) }
    }

    /// The next connection.
    pub(crate) fn next(&self) -> &C {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &self.conns[i % self.conns.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_bad_ones_are_refused_clearly() {
        assert_eq!("raw-engine".parse::<TargetSpec>(), Ok(TargetSpec::RawEngine));
        assert_eq!("three-engines".parse::<TargetSpec>(), Ok(TargetSpec::ThreeEngines));
        assert_eq!("playground".parse::<TargetSpec>(), Ok(TargetSpec::Playground));
        assert_eq!("playground-insecure".parse::<TargetSpec>(), Ok(TargetSpec::PlaygroundInsecure));
        assert_eq!(
            "127.0.0.1:7001, 127.0.0.1:7002".parse::<TargetSpec>(),
            Ok(TargetSpec::Cluster(vec!["127.0.0.1:7001".into(), "127.0.0.1:7002".into()]))
        );
        assert_eq!(
            "resp:127.0.0.1:6379".parse::<TargetSpec>(),
            Ok(TargetSpec::Resp(RespAt::Addrs(vec!["127.0.0.1:6379".into()])))
        );
        assert_eq!("resp:playground".parse::<TargetSpec>(), Ok(TargetSpec::Resp(RespAt::Playground)));
        assert_eq!("resp:playground-insecure".parse::<TargetSpec>(), Ok(TargetSpec::Resp(RespAt::PlaygroundInsecure)));
        assert_eq!(
            "etcd:127.0.0.1:2379,127.0.0.1:22379".parse::<TargetSpec>(),
            Ok(TargetSpec::Etcd(vec!["127.0.0.1:2379".into(), "127.0.0.1:22379".into()]))
        );
        for bad in ["raw", "host", "host:port", ":7001", "127.0.0.1:7001,", "resp:", "etcd:x", "resp:playgrounds"] {
            let e = bad.parse::<TargetSpec>().expect_err(bad);
            assert!(e.contains("three-engines") && e.contains("etcd:HOST:PORT"), "{e}");
        }
        for spec in ["raw-engine", "three-engines", "resp:playground", "etcd:127.0.0.1:2379", "resp:h:1,h:2"] {
            let parsed: TargetSpec = spec.parse().expect(spec);
            assert_eq!(parsed.name(), spec, "a report names the target as it was given");
        }
    }

    #[test]
    fn round_robin_hands_out_every_connection_in_turn() {
        let rr = RoundRobin::new(vec![0, 1, 2]);
        let got: Vec<i32> = (0..7).map(|_| *rr.next()).collect();
        assert_eq!(got, vec![0, 1, 2, 0, 1, 2, 0]);
    }
}
