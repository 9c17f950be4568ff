//! Presage through its Rust client library: a playground this process starts and stops, or a
//! running cluster by its native addresses.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use presage_client::{Client, ClientConfig};
use presage_playground::{Playground, PlaygroundOptions};
use tokio::runtime::Handle;

use super::{Target, TargetError};

/// Starts a 3-node, 3-region playground of `binary` in a new temporary folder under `work_dir`
/// (secure unless `insecure`); the folder lives as long as the playground.
pub fn start_playground(
    rt: &Handle,
    binary: PathBuf,
    work_dir: &Path,
    insecure: bool,
) -> Result<(Playground, tempfile::TempDir), TargetError> {
    let dir = tempfile::tempdir_in(work_dir)
        .map_err(|source| TargetError::Io { what: format!("a temporary folder in {}", work_dir.display()), source })?;
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
    Ok((pg, dir))
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
        let (pg, dir) = start_playground(rt, binary, work_dir, insecure)?;
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
