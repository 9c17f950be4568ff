//! The targets a benchmark runs against: a bare RocksDB engine in this process (the physical
//! limit of one node's storage), a playground this process starts and stops, or a running
//! cluster at the given addresses.
//!
//! Every target offers the same three blocking calls; the cluster targets run the client's
//! futures on a shared runtime, so the driver's threads treat all targets alike.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use presage_client::{Client, ClientConfig, ClientError};
use presage_engine::{
    Cf, Engine, EngineError, KeyRange, Reader, RocksConfig, RocksEngine, ScanLimit, ScanOrder, WriteBatch, WriteOptions,
};
use tokio::runtime::Handle;

use presage_playground::{Playground, PlaygroundError, PlaygroundOptions};

/// Most bytes one scan page may carry from the raw engine (the cluster's client pages by its
/// own `max_scan_page_bytes`).
pub const MAX_SCAN_PAGE_BYTES: usize = 4 << 20;

/// Where to run, as given to `--target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    /// A bare RocksDB engine in a temporary folder, synced writes.
    RawEngine,
    /// A 3-node playground in a temporary folder, started for the run and stopped after it
    /// (secure: TLS and a login, as every playground).
    Playground,
    /// The same without TLS and credentials (`--insecure`): what security costs, side by side.
    PlaygroundInsecure,
    /// A running cluster: native addresses of some of its nodes.
    Cluster(Vec<String>),
}

impl TargetSpec {
    /// The name in reports.
    pub fn name(&self) -> String {
        match self {
            TargetSpec::RawEngine => "raw-engine".into(),
            TargetSpec::Playground => "playground".into(),
            TargetSpec::PlaygroundInsecure => "playground-insecure".into(),
            TargetSpec::Cluster(addrs) => addrs.join(","),
        }
    }
}

impl FromStr for TargetSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "raw-engine" => Ok(TargetSpec::RawEngine),
            "playground" => Ok(TargetSpec::Playground),
            "playground-insecure" => Ok(TargetSpec::PlaygroundInsecure),
            _ => {
                let addrs: Vec<String> = s.split(',').map(str::trim).map(String::from).collect();
                for a in &addrs {
                    let ok =
                        a.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
                    if !ok {
                        return Err(format!(
                            "target {s:?}: expected raw-engine, playground, playground-insecure or HOST:PORT[,HOST:PORT...] (bad address {a:?})"
                        ));
                    }
                }
                Ok(TargetSpec::Cluster(addrs))
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
    /// The playground did not start.
    #[error("playground: {0}")]
    Playground(#[from] PlaygroundError),
    /// A temporary folder could not be made.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
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

/// A bare RocksDB engine with the node's default configuration; every write waits for the
/// WAL's fsync, the durability a cluster's acknowledgement has.
pub struct RawEngineTarget {
    engine: RocksEngine,
    _dir: tempfile::TempDir,
}

impl RawEngineTarget {
    /// Opens an engine in a new temporary folder under `work_dir`.
    pub fn open(work_dir: &Path) -> Result<Self, TargetError> {
        let dir = tempfile::tempdir_in(work_dir).map_err(|source| TargetError::Io {
            what: format!("a temporary folder in {}", work_dir.display()),
            source,
        })?;
        let engine = RocksEngine::open(dir.path(), &RocksConfig::default())?;
        Ok(RawEngineTarget { engine, _dir: dir })
    }
}

impl Target for RawEngineTarget {
    fn read(&self, key: &[u8]) -> Result<bool, TargetError> {
        Ok(self.engine.get(Cf::Data, key)?.is_some())
    }

    fn write(&self, key: &[u8], value: &[u8]) -> Result<(), TargetError> {
        let mut wb = WriteBatch::new();
        wb.put(Cf::Data, key, value);
        Ok(self.engine.write(&wb, WriteOptions::SYNC)?)
    }

    fn scan(&self, start: &[u8], max_keys: usize) -> Result<usize, TargetError> {
        let range = KeyRange::new(start, None)?;
        let page =
            self.engine.scan(Cf::Data, &range, ScanOrder::Forward, ScanLimit::new(max_keys, MAX_SCAN_PAGE_BYTES))?;
        Ok(page.pairs.len())
    }
}

/// A cluster through the Rust client library.
pub struct ClusterTarget {
    client: Arc<Client>,
    rt: Handle,
    playground: Option<(Playground, tempfile::TempDir)>,
}

/// The client settings the benchmark uses: a request gives up after `request_timeout`. A
/// running cluster is reached with TLS when `PRESAGE_CA_CERT` names its CA, logging in as
/// `PRESAGE_USER` with `PRESAGE_PASSWORD` when set.
pub fn client_config(request_timeout: Duration) -> ClientConfig {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let tls = env("PRESAGE_CA_CERT").map(|ca| presage_client::ClientTls {
        ca_cert: ca.into(),
        client_cert: None,
        client_key: None,
        server_name: None,
    });
    let login = match (env("PRESAGE_USER"), env("PRESAGE_PASSWORD")) {
        (Some(user), Some(password)) => Some(presage_client::Login { user, password }),
        _ => None,
    };
    ClientConfig { request_timeout_ms: request_timeout.as_millis() as u64, tls, login, ..ClientConfig::default() }
}

impl ClusterTarget {
    /// Connects to the cluster at `addrs`.
    pub fn connect(rt: &Handle, addrs: &[String], cfg: ClientConfig) -> Result<Self, TargetError> {
        let client = rt.block_on(Client::connect(addrs, cfg))?;
        Ok(ClusterTarget { client: Arc::new(client), rt: rt.clone(), playground: None })
    }

    /// Starts a 3-node, 3-region playground of `binary` under `work_dir` (secure unless
    /// `insecure`) and connects to it.
    pub fn playground(
        rt: &Handle,
        binary: PathBuf,
        work_dir: &Path,
        cfg: ClientConfig,
        insecure: bool,
    ) -> Result<Self, TargetError> {
        let dir = tempfile::tempdir_in(work_dir).map_err(|source| TargetError::Io {
            what: format!("a temporary folder in {}", work_dir.display()),
            source,
        })?;
        let opts = PlaygroundOptions {
            nodes: 3,
            regions: 3,
            data_dir: dir.path().to_path_buf(),
            overrides: vec![],
            binary,
            ready_timeout: Duration::from_secs(120),
            insecure,
        };
        let pg = rt.block_on(Playground::start(&opts))?;
        let cfg = ClientConfig { tls: pg.client_config().tls, login: pg.client_config().login, ..cfg };
        let mut target = ClusterTarget::connect(rt, &pg.cluster.native_addrs(), cfg)?;
        target.playground = Some((pg, dir));
        Ok(target)
    }

    /// Stops the playground this target started, if any.
    pub fn stop(&mut self) {
        if let Some((mut pg, _dir)) = self.playground.take() {
            pg.stop(Duration::from_secs(10));
        }
    }
}

impl Drop for ClusterTarget {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Target for ClusterTarget {
    fn read(&self, key: &[u8]) -> Result<bool, TargetError> {
        Ok(self.rt.block_on(self.client.get(key))?.is_some())
    }

    fn write(&self, key: &[u8], value: &[u8]) -> Result<(), TargetError> {
        Ok(self.rt.block_on(self.client.put(key, value))?)
    }

    fn scan(&self, start: &[u8], max_keys: usize) -> Result<usize, TargetError> {
        Ok(self.rt.block_on(self.client.scan(start, None, max_keys))?.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_bad_ones_are_refused_clearly() {
        assert_eq!("raw-engine".parse::<TargetSpec>(), Ok(TargetSpec::RawEngine));
        assert_eq!("playground".parse::<TargetSpec>(), Ok(TargetSpec::Playground));
        assert_eq!("playground-insecure".parse::<TargetSpec>(), Ok(TargetSpec::PlaygroundInsecure));
        assert_eq!(
            "127.0.0.1:7001, 127.0.0.1:7002".parse::<TargetSpec>(),
            Ok(TargetSpec::Cluster(vec!["127.0.0.1:7001".into(), "127.0.0.1:7002".into()]))
        );
        for bad in ["raw", "host", "host:port", ":7001", "127.0.0.1:7001,"] {
            let e = bad.parse::<TargetSpec>().expect_err(bad);
            assert!(e.contains("raw-engine, playground, playground-insecure or HOST:PORT"), "{e}");
        }
    }

    #[test]
    fn the_raw_engine_reads_writes_and_scans() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = RawEngineTarget::open(dir.path()).expect("opens");
        assert!(!t.read(b"k1").expect("read"));
        for k in [b"k1", b"k2", b"k3"] {
            t.write(k, b"v").expect("write");
        }
        assert!(t.read(b"k2").expect("read"));
        assert_eq!(t.scan(b"k2", 10).expect("scan"), 2);
        assert_eq!(t.scan(b"k1", 2).expect("scan"), 2);
    }
}
