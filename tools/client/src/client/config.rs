//! A client's settings ([`ClientConfig`]), and the priority and replica reads of the task's
//! requests ([`with_priority`], [`with_replica_reads`]).

use serde::{Deserialize, Serialize};

use crate::net::{Login, NetConfig};
use crate::proto::Priority;
use crate::tls::ClientTls;

tokio::task_local! {
    /// The priority [`with_priority`] set for the running task.
    pub(super) static TASK_PRIORITY: Priority;
    /// Whether [`with_replica_reads`] made the running task's reads replica reads.
    pub(super) static TASK_REPLICA_READS: bool;
}

/// Runs `fut` with its reads sent to any replica (`on`) or to leaders only, over the
/// client's [`ClientConfig::replica_reads`] (RESP's `READONLY` and `READWRITE`).
pub async fn with_replica_reads<F: std::future::Future>(on: bool, fut: F) -> F::Output {
    TASK_REPLICA_READS.scope(on, fut).await
}

/// Runs `fut` with every data request it makes at `priority` (over the client's configured
/// one): `with_priority(Priority::Critical, client.put(k, v)).await`.
pub async fn with_priority<F: std::future::Future>(priority: Priority, fut: F) -> F::Output {
    TASK_PRIORITY.scope(priority, fut).await
}

/// Client settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct ClientConfig {
    /// A request gives up after this long, retries included.
    pub request_timeout_ms: u64,
    /// One attempt waits this long for its answer.
    pub attempt_timeout_ms: u64,
    /// First pause between retries (doubling up to `max_backoff_ms`; each pause is drawn from
    /// the upper half of its backoff, a jitter).
    pub backoff_ms: u64,
    /// Longest pause between retries.
    pub max_backoff_ms: u64,
    /// Directory entries fetched per refresh.
    pub max_routes_per_refresh: u32,
    /// Largest scan page asked of a shard, in pairs.
    pub max_scan_page_keys: u32,
    /// Largest scan page asked of a shard, in bytes.
    pub max_scan_page_bytes: u32,
    /// Most keys in one `get_many` or `batch`.
    pub max_batch_keys: usize,
    /// A node that let an attempt time out (or lost its connection) is tried after every
    /// other replica for this long, by every request of this client: a stalled node is paid
    /// for once, not once per request.
    pub silent_node_ms: u64,
    /// Most writes in flight at once (each holds a request-id slot); more wait for one.
    pub max_write_slots: usize,
    /// Connections to the nodes (over TCP).
    pub net: NetConfig,
    /// TLS to the nodes (a secure cluster); `None`: plain TCP (an insecure one).
    pub tls: Option<ClientTls>,
    /// The user and password every connection logs in with (none with a client certificate
    /// or on an insecure cluster).
    pub login: Option<Login>,
    /// Seeds the retry jitter, so that a seeded test replays exactly; `None`: seeded from the
    /// operating system.
    #[serde(skip)]
    pub jitter_seed: Option<u64>,
    /// The priority of this client's requests unless [`with_priority`] sets another.
    pub priority: Priority,
    /// Reads go to any replica of their shard, not only its leader (replica reads): spreads
    /// reads over the replicas, each answer still linearizable (a follower asks its leader
    /// for the read index first). The choice is weighted by the shard manager's read weights,
    /// so a node it shifts traffic off gets fewer reads, then none.
    pub replica_reads: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            request_timeout_ms: 10_000,
            attempt_timeout_ms: 2_000,
            backoff_ms: 10,
            max_backoff_ms: 500,
            max_routes_per_refresh: 256,
            max_scan_page_keys: 1_000,
            max_scan_page_bytes: 1 << 20,
            max_batch_keys: 10_000,
            silent_node_ms: 5_000,
            max_write_slots: 4_096,
            net: NetConfig::default(),
            tls: None,
            login: None,
            jitter_seed: None,
            priority: Priority::Normal,
            replica_reads: false,
        }
    }
}
