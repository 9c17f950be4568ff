//! Any RESP server — redis-server, or a Presage node's RESP port — through redis-rs
//! multiplexed connections, as applications reach one: `SET key value` and `GET key`.
//!
//! `connections` connections are opened (spread over the given addresses, or over a
//! playground's nodes) and handed out in turn, so several client threads share each one with
//! their requests in flight together on it. A playground target logs in with the playground's
//! RESP user over TLS (its CA); `resp:playground-insecure` and running servers use plain TCP
//! without a login. RESP has no ordered range read, so scans are refused.

use std::path::PathBuf;
use std::time::Duration;

use presage_playground::Playground;
use redis::aio::MultiplexedConnection;
use tokio::runtime::Handle;

use super::cluster::start_playground;
use super::{RespAt, RoundRobin, Target, TargetError};

/// A RESP server, or a playground's nodes through RESP.
pub struct RespTarget {
    conns: RoundRobin<MultiplexedConnection>,
    rt: Handle,
    timeout: Duration,
    playground: Option<(Playground, tempfile::TempDir)>,
}

/// How to reach one server.
struct Endpoint {
    url: String,
    ca_pem: Option<Vec<u8>>,
}

impl Endpoint {
    fn client(&self) -> Result<redis::Client, TargetError> {
        Ok(match &self.ca_pem {
            None => redis::Client::open(self.url.as_str())?,
            Some(ca) => redis::Client::build_with_tls(
                self.url.as_str(),
                redis::TlsCertificates { client_tls: None, root_cert: Some(ca.clone()) },
            )?,
        })
    }
}

impl RespTarget {
    /// Opens `connections` connections to `at` (starting a playground of `binary` under
    /// `work_dir` first when `at` asks for one); a request gives up after `timeout`.
    pub fn open(
        rt: &Handle,
        at: &RespAt,
        connections: usize,
        timeout: Duration,
        binary: PathBuf,
        work_dir: &std::path::Path,
    ) -> Result<Self, TargetError> {
        let (endpoints, playground) = match at {
            RespAt::Addrs(addrs) => {
                let eps = addrs.iter().map(|a| Endpoint { url: format!("redis://{a}/"), ca_pem: None }).collect();
                (eps, None)
            }
            RespAt::Playground | RespAt::PlaygroundInsecure => {
                let insecure = *at == RespAt::PlaygroundInsecure;
                let (pg, dir) = start_playground(rt, binary, work_dir, insecure)?;
                let eps = playground_endpoints(&pg)?;
                (eps, Some((pg, dir)))
            }
        };
        let mut conns = Vec::with_capacity(connections);
        for i in 0..connections.max(1) {
            let ep = &endpoints[i % endpoints.len()];
            let client = ep.client()?;
            let conn = rt
                .block_on(async { tokio::time::timeout(timeout, client.get_multiplexed_async_connection()).await })
                .map_err(|_| TargetError::Timeout { timeout_ms: timeout.as_millis() as u64 })??;
            conns.push(conn);
        }
        Ok(RespTarget { conns: RoundRobin::new(conns), rt: rt.clone(), timeout, playground })
    }

    fn query<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, TargetError> {
        let mut conn = self.conns.next().clone();
        self.rt
            .block_on(async { tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut conn)).await })
            .map_err(|_| TargetError::Timeout { timeout_ms: self.timeout.as_millis() as u64 })?
            .map_err(TargetError::from)
    }
}

/// Every node's RESP address, with the playground's login and CA when it is secure.
fn playground_endpoints(pg: &Playground) -> Result<Vec<Endpoint>, TargetError> {
    let sec = &pg.cluster.security;
    let ca_pem = match &sec.ca_cert {
        Some(path) if !sec.insecure => Some(
            std::fs::read(path)
                .map_err(|source| TargetError::Io { what: format!("reading {}", path.display()), source })?,
        ),
        _ => None,
    };
    let login = match (&sec.resp_user, &sec.resp_password) {
        (Some(u), Some(p)) if !sec.insecure => format!("{u}:{p}@"),
        _ => String::new(),
    };
    let scheme = if ca_pem.is_some() { "rediss" } else { "redis" };
    Ok(pg
        .cluster
        .nodes
        .iter()
        .map(|n| Endpoint { url: format!("{scheme}://{login}{}/", n.resp), ca_pem: ca_pem.clone() })
        .collect())
}

impl Drop for RespTarget {
    fn drop(&mut self) {
        if let Some((mut pg, _dir)) = self.playground.take() {
            pg.stop(Duration::from_secs(10));
        }
    }
}

impl Target for RespTarget {
    fn read(&self, key: &[u8]) -> Result<bool, TargetError> {
        let got: Option<Vec<u8>> = self.query(redis::cmd("GET").arg(key).clone())?;
        Ok(got.is_some())
    }

    fn write(&self, key: &[u8], value: &[u8]) -> Result<(), TargetError> {
        self.query::<()>(redis::cmd("SET").arg(key).arg(value).clone())
    }

    fn scan(&self, _start: &[u8], _max_keys: usize) -> Result<usize, TargetError> {
        Err(TargetError::Unsupported { target: "a RESP target", what: "ordered scans (YCSB E)" })
    }
}
