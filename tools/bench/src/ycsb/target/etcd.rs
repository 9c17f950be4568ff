//! etcd over its v3 gRPC API (etcd-client): `Put`, a linearizable `Range` of one key for a
//! read (etcd's default, the consistency Presage's reads have), and a `Range` from a key with
//! a limit for a scan.
//!
//! `connections` clients are opened, client `i` to member `i mod members` (as etcd's own
//! benchmark spreads its clients), each one HTTP/2 connection carrying the requests of the
//! threads it is handed to in turn. No TLS and no login: the member URLs are `http://`.

use std::time::Duration;

use etcd_client::{GetOptions, KvClient};
use tokio::runtime::Handle;

use super::{RoundRobin, Target, TargetError};

/// A running etcd cluster.
pub struct EtcdTarget {
    clients: RoundRobin<KvClient>,
    rt: Handle,
    timeout: Duration,
}

impl EtcdTarget {
    /// Opens `connections` clients to the members at `addrs`; a request gives up after
    /// `timeout`.
    pub fn open(rt: &Handle, addrs: &[String], connections: usize, timeout: Duration) -> Result<Self, TargetError> {
        assert!(!addrs.is_empty(), "an etcd target has a member");
        let timed_out = || TargetError::Timeout { timeout_ms: timeout.as_millis() as u64 };
        let mut clients = Vec::with_capacity(connections);
        for i in 0..connections.max(1) {
            let url = format!("http://{}", addrs[i % addrs.len()]);
            let opts = etcd_client::ConnectOptions::new().with_connect_timeout(timeout).with_timeout(timeout);
            let client = rt
                .block_on(async {
                    tokio::time::timeout(timeout, etcd_client::Client::connect([url], Some(opts))).await
                })
                .map_err(|_| timed_out())??;
            clients.push(client.kv_client());
        }
        Ok(EtcdTarget { clients: RoundRobin::new(clients), rt: rt.clone(), timeout })
    }

    fn get(&self, key: &[u8], opts: Option<GetOptions>) -> Result<etcd_client::GetResponse, TargetError> {
        let mut kv = self.clients.next().clone();
        self.rt
            .block_on(async { tokio::time::timeout(self.timeout, kv.get(key, opts)).await })
            .map_err(|_| TargetError::Timeout { timeout_ms: self.timeout.as_millis() as u64 })?
            .map_err(TargetError::from)
    }
}

impl Target for EtcdTarget {
    fn read(&self, key: &[u8]) -> Result<bool, TargetError> {
        Ok(!self.get(key, None)?.kvs().is_empty())
    }

    fn write(&self, key: &[u8], value: &[u8]) -> Result<(), TargetError> {
        let mut kv = self.clients.next().clone();
        self.rt
            .block_on(async { tokio::time::timeout(self.timeout, kv.put(key, value, None)).await })
            .map_err(|_| TargetError::Timeout { timeout_ms: self.timeout.as_millis() as u64 })??;
        Ok(())
    }

    fn scan(&self, start: &[u8], max_keys: usize) -> Result<usize, TargetError> {
        let opts = GetOptions::new().with_from_key().with_limit(max_keys as i64);
        Ok(self.get(start, Some(opts))?.kvs().len())
    }
}
